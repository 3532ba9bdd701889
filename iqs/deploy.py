"""digiKam's deployment contract: its preprocessing, and a network that honours it.

digiKam's aesthetic detector (OpenCV DNN) feeds every photo as: RGB, resized to 299x299 with
nearest-neighbour (``INTER_NEAREST_EXACT``), pixels mapped to [-1, 1] (``x / 127.5 - 1``), NCHW;
the arg-max of the 3 outputs is the class (0 Rejected, 1 Pending, 2 Accepted).
:class:`DeployedModel` takes exactly that input and bakes whatever else the backbone needs
(its own input size, its normalisation) into the graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iqs.models.module import IQSModule

DIGIKAM_SIZE = 299


def digikam_preprocess(rgb: np.ndarray, size: int = DIGIKAM_SIZE) -> np.ndarray:
    """One RGB uint8 photo -> the ``3 x size x size`` float32 array digiKam feeds the network."""
    resized = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)
    return (resized.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)


class DeployedModel(nn.Module):
    """``[-1, 1]`` NCHW photos at digiKam's size -> class probabilities (N x 3).

    Args:
        model: the trained module.
        input_size: the side the backbone was trained at; the input is resized to it (bilinear)
            inside the graph when it differs from digiKam's 299.
        mean, std: the backbone's normalisation of [0, 1] pixels.
    """

    def __init__(
        self,
        model: IQSModule,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        size: int = DIGIKAM_SIZE,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.input_size = int(input_size)
        self.size = int(size)
        # [-1, 1] -> (x01 - mean) / std  ==  x * scale + shift, per channel.
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("scale", 0.5 / std_t)
        self.register_buffer("shift", (0.5 - mean_t) / std_t)

    def forward(self, x: Tensor) -> Tensor:
        if self.input_size != self.size:
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False
            )
        return self.model.predict_probs(x * self.scale + self.shift)
