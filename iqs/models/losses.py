"""Losses. Each also says how its outputs become a continuous quality score in [0, 1].

A loss is one class here plus one YAML under ``conf/loss/`` naming it with ``_target_``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from iqs.data.labels import NUM_CLASSES


class QualityLoss(nn.Module):
    """Base class: ``forward(outputs, labels, scores)`` -> scalar loss.

    ``num_outputs`` is the width the head must produce; ``class_logits`` and ``predict_score``
    turn the head's outputs into class logits and a score in [0, 1] for SRCC/PLCC.
    """

    num_outputs: int = NUM_CLASSES

    def class_logits(self, outputs: Tensor) -> Tensor:
        return outputs[:, :NUM_CLASSES]

    def predict_score(self, outputs: Tensor) -> Tensor:
        """Expected class under the softmax, scaled to [0, 1]."""
        probs = self.class_logits(outputs).float().softmax(dim=1)
        ranks = torch.arange(NUM_CLASSES, device=probs.device, dtype=probs.dtype)
        return (probs * ranks).sum(dim=1) / (NUM_CLASSES - 1)


class CrossEntropy(QualityLoss):
    """Categorical cross-entropy, the study's loss; optional label smoothing."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, outputs: Tensor, labels: Tensor, scores: Tensor) -> Tensor:
        return F.cross_entropy(
            self.class_logits(outputs).float(), labels, label_smoothing=self.label_smoothing
        )
