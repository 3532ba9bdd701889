"""The classic baseline (``model=classic``): digiKam's four hand-made defect measures as features.

digiKam's classic Image Quality Sorter (``core/libs/imgqsort/detectors``) scores every photo with
four detectors built on OpenCV — blur, noise, exposure and compression — and thresholds a weighted
sum of them. :class:`ClassicFeatures` computes measures of the same four defects with OpenCV and
NumPy and hands them, as a short feature vector, to the usual head, which is trained in the usual
loop. The thresholds and weights digiKam sets by hand are thus learnt from the labels, and every
comparison shows what a deep backbone adds over the classic measures.

The features are computed on the CPU, image by image, from 8-bit pixels (as digiKam does); they
carry no gradient and the module has no parameters, so only the head is trained. It cannot be
exported to ONNX (the measures are not graph operations): digiKam ships the classic sorter itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from iqs.models.backbones import BackboneError

# digiKam's exposure thresholds (grey levels): under 15 is under-, from 245 over-exposed.
DARK_LEVEL = 15
BRIGHT_LEVEL = 245
# digiKam's defocus map: smoothed log|Laplacian| / log(30), x 255, below 115 counts as blurred.
DEFOCUS_LOG_BASE = 30.0
DEFOCUS_THRESHOLD = 115.0 / 255.0
DEFOCUS_SMOOTH = 5
# A pixel is "flat" (digiKam's mono-colour map) when its RGB values differ from their 5x5 median
# by at most this much, summed over the three channels.
FLAT_LEVEL = 1
JPEG_BLOCK = 8

FEATURE_NAMES: tuple[str, ...] = (
    "blur_laplacian_var",  # log1p variance of the Laplacian: high = sharp
    "blur_gradient_energy",  # log1p mean squared Sobel gradient (Tenengrad): high = sharp
    "blur_defocus_share",  # share of pixels digiKam's defocus map calls blurred: high = blurred
    "noise_luma_sigma",  # log1p Immerkaer noise sigma of the grey image: high = noisy
    "noise_chroma_sigma",  # log1p robust residual sigma of the chroma (Cr, Cb): high = colour noise
    "exposure_mean",  # mean grey level / 255
    "exposure_dark_share",  # share of grey levels below 15
    "exposure_bright_share",  # share of grey levels at 245 and above
    "exposure_spread",  # (95th - 5th percentile of grey) / 255: low = flat, washed-out or dark
    "compression_blockiness",  # log of the 8 px grid's share of the row/column differences
    "compression_flat_share",  # share of pixels at their 5x5 median (digiKam's mono-colour map)
)

# Fixed scaling of the raw measures (after the log1p above): (raw - centre) / scale. The constants
# are the rounded mean and standard deviation of each measure on the built-in data (64 px crops);
# on whole photos at 224 px the scaled values stay within about +-2. Constants, not statistics of
# a run, so that a checkpoint means the same on any data; the head's first layer adapts the rest.
_CENTRE = np.array([6.0, 9.0, 0.4, 1.0, 0.25, 0.4, 0.05, 0.02, 0.5, 0.2, 0.3], dtype=np.float32)
_SCALE = np.array([2.0, 1.5, 0.35, 0.7, 0.6, 0.2, 0.15, 0.1, 0.22, 0.1, 0.25], dtype=np.float32)

# Immerkaer's noise operator (difference of two Laplacians): zero on any locally linear image,
# so what it measures in smooth areas is noise.
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)


class ClassicFeatures(nn.Module):
    """Normalised NCHW photos -> ``N x 11`` classic defect measures (see ``FEATURE_NAMES``).

    A parameter-free stand-in for a timm backbone: ``num_features`` and ``head_hidden_size``
    answer what :class:`iqs.models.module.IQSModule` asks of one.

    Args:
        name: the backbone name in the run config (``classic``); not used.
        pretrained, weights: accepted so that the shared backbone keys (and ``load_checkpoint``,
            which sets them) work; there is nothing to load, so they must stay false / null.
        input_size: the side the data module resizes to (read by ``input_config``); not used.
        mean, std: the normalisation of [0, 1] RGB pixels the data module applied; undone here to
            recover the 8-bit photo. ``input_config`` gives the data module the same values.
    """

    head_hidden_size = None
    num_features = len(FEATURE_NAMES)

    def __init__(
        self,
        name: str = "classic",
        pretrained: bool = False,
        weights: str | None = None,
        input_size: int = 224,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        super().__init__()
        if pretrained or weights is not None:
            raise BackboneError(
                "model=classic has no weights to load: set model.backbone.pretrained=false and "
                "model.backbone.weights=null"
            )
        self.name = name
        self.input_size = int(input_size)
        # Plain arrays, not buffers: the features are computed in NumPy, and checkpoints of the
        # classic model then hold the head's weights only.
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            raise RuntimeError(
                "model=classic computes its features with OpenCV and cannot be traced or "
                "exported; digiKam's own classic sorter is its deployable form"
            )
        images = x.detach().float().cpu().numpy() * self.std + self.mean  # [0, 1] RGB
        rgb = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        feats = np.stack([classic_measures(np.ascontiguousarray(im)) for im in rgb])
        feats = (feats - _CENTRE) / _SCALE
        return torch.from_numpy(feats).to(device=x.device, dtype=x.dtype)


def classic_measures(rgb: np.ndarray) -> np.ndarray:
    """The raw measures of one ``H x W x 3`` uint8 RGB photo, in ``FEATURE_NAMES`` order."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return np.array(
        [*blur_measures(grey), *noise_measures(rgb, grey), *exposure_measures(grey),
         *compression_measures(rgb, grey)],
        dtype=np.float32,
    )  # fmt: skip


def blur_measures(grey: np.ndarray) -> tuple[float, float, float]:
    """Sharpness from edges, as digiKam's ``BlurDetector`` starts: the Laplacian of the grey image.

    - variance of the Laplacian (the classic focus measure; digiKam's first blur detector);
    - gradient energy (Tenengrad: mean of the squared Sobel gradient), less sensitive to noise;
    - digiKam's defocus map: log|Laplacian| / log(30), smoothed (5x5 box, then 5x5 median);
      the share of pixels under 115/255 is the share digiKam counts as blurred.
    """
    lap = cv2.Laplacian(grey, cv2.CV_32F)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1)
    logmap = np.log(np.maximum(np.abs(lap), 1.0)) / math.log(DEFOCUS_LOG_BASE)
    logmap = cv2.blur(logmap, (DEFOCUS_SMOOTH, DEFOCUS_SMOOTH))
    logmap = cv2.medianBlur(logmap, DEFOCUS_SMOOTH)
    return (
        math.log1p(float(lap.var())),
        math.log1p(float(np.mean(gx * gx + gy * gy))),
        float(np.mean(logmap < DEFOCUS_THRESHOLD)),
    )


def noise_measures(rgb: np.ndarray, grey: np.ndarray) -> tuple[float, float]:
    """Noise level, where digiKam's ``NoiseDetector`` fits the kurtosis of Haar wavelet bands.

    - luma: Immerkaer's estimate, sigma = sqrt(pi / 2) / 6 * mean |I * N| with N the 3x3
      difference-of-Laplacians operator (fast, and robust to image structure);
    - chroma: the robust (MAD) spread of Cr and Cb around their 3x3 median; colour noise
      (digiKam's ISO noise) shows there while most scene detail lives in the luma.
    """
    conv = cv2.filter2D(grey.astype(np.float32), -1, _IMMERKAER, borderType=cv2.BORDER_REPLICATE)
    luma_sigma = math.sqrt(math.pi / 2) / 6.0 * float(np.mean(np.abs(conv[1:-1, 1:-1])))
    chroma = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)[..., 1:]
    residual = chroma.astype(np.float32) - cv2.medianBlur(chroma, 3).astype(np.float32)
    chroma_sigma = 1.4826 * float(np.median(np.abs(residual)))
    return math.log1p(luma_sigma), math.log1p(chroma_sigma)


def exposure_measures(grey: np.ndarray) -> tuple[float, float, float, float]:
    """Exposure from the grey histogram, as digiKam's ``ExposureDetector`` counts clipped pixels.

    - mean grey level / 255;
    - share of pixels below 15 (digiKam's under-exposure threshold);
    - share at 245 and above (digiKam's over-exposure threshold);
    - spread: (95th - 5th percentile) / 255, low for flat, washed-out or crushed histograms.
    """
    low, high = np.percentile(grey, (5, 95))
    return (
        float(grey.mean()) / 255.0,
        float(np.mean(grey < DARK_LEVEL)),
        float(np.mean(grey >= BRIGHT_LEVEL)),
        float(high - low) / 255.0,
    )


def compression_measures(rgb: np.ndarray, grey: np.ndarray) -> tuple[float, float]:
    """JPEG artefacts, as digiKam's ``CompressionDetector`` counts block edges and flat regions.

    - blockiness: the absolute differences between neighbouring columns (and rows) are averaged
      per position modulo 8; the log ratio of the strongest position (the block boundary, found
      whatever the crop's offset) to the mean of the others is 0 without a grid. Resizing after
      compression stretches the grid off 8 px and weakens this measure.
    - flat share: digiKam's mono-colour map, the share of pixels whose RGB values equal their
      5x5 median (within ``FLAT_LEVEL``); coarse quantisation flattens whole blocks.
    """
    g = grey.astype(np.float32)
    ratios = []
    for diff in (np.abs(np.diff(g, axis=1)).mean(axis=0), np.abs(np.diff(g, axis=0)).mean(axis=1)):
        n = len(diff) // JPEG_BLOCK * JPEG_BLOCK
        if n < 2 * JPEG_BLOCK:
            continue
        phases = diff[:n].reshape(-1, JPEG_BLOCK).mean(axis=0)
        k = int(np.argmax(phases))
        others = np.delete(phases, k).mean()
        ratios.append(math.log((phases[k] + 1.0) / (others + 1.0)))
    blockiness = float(np.mean(ratios)) if ratios else 0.0
    deviation = cv2.absdiff(rgb, cv2.medianBlur(rgb, 5)).astype(np.int32).sum(axis=2)
    return blockiness, float(np.mean(deviation <= FLAT_LEVEL))
