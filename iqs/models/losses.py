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


class WeightedCrossEntropy(QualityLoss):
    """Cross-entropy with per-class weights against class imbalance.

    ``weights="balanced"`` sets weight_c = N / (C * count_c) from the training split's class
    counts (given by the module at fit start via :meth:`set_class_counts`); a list fixes them.
    """

    def __init__(self, weights: str | list[float] = "balanced", label_smoothing: float = 0.0):
        super().__init__()
        self.mode = weights
        self.label_smoothing = label_smoothing
        balanced = weights == "balanced"
        weight = torch.ones(NUM_CLASSES) if balanced else torch.tensor(weights, dtype=torch.float32)
        self.register_buffer("weight", weight)

    def set_class_counts(self, counts: Tensor) -> None:
        if self.mode == "balanced":
            # sklearn's "balanced": N / (classes present x count); a class absent from the
            # training split weighs 0 (label smoothing still gives it target mass, and a
            # clamped count would have weighed it N / C, blowing the loss up)
            counts = counts.float()
            present = counts > 0
            weight = torch.zeros_like(counts)
            weight[present] = counts.sum() / (int(present.sum()) * counts[present])
            self.weight.copy_(weight)

    def forward(self, outputs: Tensor, labels: Tensor, scores: Tensor) -> Tensor:
        return F.cross_entropy(
            self.class_logits(outputs).float(),
            labels,
            weight=self.weight,
            label_smoothing=self.label_smoothing,
        )


class FocalLoss(QualityLoss):
    """Focal loss (Lin et al. 2017): cross-entropy scaled by (1 - p_true)^gamma."""

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, outputs: Tensor, labels: Tensor, scores: Tensor) -> Tensor:
        log_p = self.class_logits(outputs).float().log_softmax(dim=1)
        log_pt = log_p.gather(1, labels[:, None]).squeeze(1)
        return (-((1 - log_pt.exp()) ** self.gamma) * log_pt).mean()


class EMDLoss(QualityLoss):
    """NIMA's earth mover's distance between predicted and true class distributions over the
    ordered classes: mean over samples of (mean_k |CDF_pred(k) - CDF_true(k)|^r)^(1/r)."""

    def __init__(self, r: float = 2.0) -> None:
        super().__init__()
        self.r = r

    def forward(self, outputs: Tensor, labels: Tensor, scores: Tensor) -> Tensor:
        probs = self.class_logits(outputs).float().softmax(dim=1)
        target = F.one_hot(labels, NUM_CLASSES).float()
        diff = (probs.cumsum(dim=1) - target.cumsum(dim=1)).abs()
        return (diff.pow(self.r).mean(dim=1) + 1e-12).pow(1 / self.r).mean()


class CornLoss(QualityLoss):
    """CORN ordinal regression (Shi et al. 2021) for Rejected < Pending < Accepted.

    ``C - 1`` outputs; output k models P(y > k | y >= k) and is trained only on samples with
    y >= k. P(y > k) is the running product of the sigmoids, so the predicted class
    probabilities always respect the order.
    """

    num_outputs = NUM_CLASSES - 1

    def exceed_probs(self, outputs: Tensor) -> Tensor:
        """P(y > k) for k = 0 .. C-2."""
        # a running sum of log-sigmoids, not cumprod: ONNX has no cumprod, so a CORN model
        # could not be exported (and the product of small sigmoids underflows sooner)
        return F.logsigmoid(outputs.float()).cumsum(dim=1).exp()

    def class_logits(self, outputs: Tensor) -> Tensor:
        exceed = self.exceed_probs(outputs)
        ones = torch.ones_like(exceed[:, :1])
        zeros = torch.zeros_like(exceed[:, :1])
        probs = torch.cat([ones, exceed], dim=1) - torch.cat([exceed, zeros], dim=1)
        return probs.clamp(min=1e-12).log()

    def predict_score(self, outputs: Tensor) -> Tensor:
        return self.exceed_probs(outputs).sum(dim=1) / (NUM_CLASSES - 1)

    def forward(self, outputs: Tensor, labels: Tensor, scores: Tensor) -> Tensor:
        losses, count = [], 0
        for k in range(NUM_CLASSES - 1):
            kept = labels >= k
            if kept.any():
                target = (labels[kept] > k).float()
                losses.append(
                    F.binary_cross_entropy_with_logits(
                        outputs[kept, k].float(), target, reduction="sum"
                    )
                )
                count += int(kept.sum())
        return torch.stack(losses).sum() / max(count, 1)


class MultiTaskLoss(QualityLoss):
    """Cross-entropy on the classes plus ``weight`` x MSE of a regressed score in [0, 1].

    One extra output, squashed by a sigmoid, is the predicted score (used for SRCC/PLCC).
    """

    num_outputs = NUM_CLASSES + 1

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = weight

    def predict_score(self, outputs: Tensor) -> Tensor:
        return outputs[:, NUM_CLASSES].float().sigmoid()

    def forward(self, outputs: Tensor, labels: Tensor, scores: Tensor) -> Tensor:
        ce = F.cross_entropy(self.class_logits(outputs).float(), labels)
        return ce + self.weight * F.mse_loss(self.predict_score(outputs), scores.float())
