"""Classification and ranking metrics for one stage, overall and per source.

Scores of different data sets are not comparable, so the headline ``srcc`` is the mean of the
per-source SRCCs; ``srcc_pooled`` is the SRCC over all rows together. Where SRCC is undefined
(constant predictions or scores) it is NaN, as in scipy, and left out of the mean.
All states are torchmetrics "cat"/"sum" states, so in distributed runs they are gathered across
processes before computing, never averaged per process.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection, SumMetric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)
from torchmetrics.functional.regression import pearson_corrcoef
from torchmetrics.regression import SpearmanCorrCoef
from torchmetrics.utilities import dim_zero_cat

from iqs.data.labels import CLASS_NAMES

# Correlations need every prediction; iqs knows, and data sets of ~250k rows fit easily.
warnings.filterwarnings("ignore", message=".*will save all targets and predictions in the buffer")


class SpearmanCorrCoefUndefinedWhenConstant(SpearmanCorrCoef):
    """SRCC, NaN where it is undefined (constant predictions or targets), as in scipy:
    torchmetrics' guard against dividing by zero makes that 0, a real-looking value."""

    def compute(self) -> Tensor:
        preds, target = dim_zero_cat(self.preds), dim_zero_cat(self.target)
        if preds.numel() < 2 or bool(preds.min() == preds.max() or target.min() == target.max()):
            return torch.tensor(float("nan"), device=preds.device)
        return super().compute()


class PooledPearsonCorrCoef(SpearmanCorrCoef):
    """PLCC over every prediction, gathered like SRCC's. torchmetrics' PearsonCorrCoef merges
    per-process running moments instead, which in float32 differs from the one-process value
    by up to 1e-4."""

    def compute(self) -> Tensor:
        return pearson_corrcoef(dim_zero_cat(self.preds), dim_zero_cat(self.target))


def _collection(num_classes: int) -> MetricCollection:
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1_macro": MulticlassF1Score(num_classes, average="macro"),
            "f1": MulticlassF1Score(num_classes, average="none"),
            "srcc": SpearmanCorrCoefUndefinedWhenConstant(),
            "plcc": PooledPearsonCorrCoef(),
            "confmat": MulticlassConfusionMatrix(num_classes),
        },
        compute_groups=False,
    )


class QualityMetrics(nn.Module):
    """Accumulates predictions of one stage and computes a flat ``name -> value`` dict.

    Keys: ``acc``, ``f1_macro``, ``f1_<class>``, ``srcc`` (mean over sources), ``srcc_pooled``,
    ``plcc`` (pooled), and ``<source>/<metric>`` for each source seen; with
    :meth:`update_batch` also ``loss`` (mean per sample) and ``skipped_images`` (a count).
    ``confusion_matrix`` returns the pooled matrix separately (it is not a scalar).
    """

    def __init__(
        self, source_names: Sequence[str], class_names: Sequence[str] = CLASS_NAMES
    ) -> None:
        super().__init__()
        self.source_names = list(source_names)
        self.class_names = list(class_names)
        self.overall = _collection(len(class_names))
        self.per_source = nn.ModuleList(_collection(len(class_names)) for _ in source_names)
        self.loss = MeanMetric()
        self.skipped_images = SumMetric()
        # Not persistent: an accumulator, not a weight (checkpoints must not depend on the mix).
        self.register_buffer(
            "counts", torch.zeros(len(source_names), dtype=torch.long), persistent=False
        )

    def update(
        self, pred_class: Tensor, pred_score: Tensor, label: Tensor, score: Tensor, source: Tensor
    ) -> None:
        pred_score, score = pred_score.float(), score.float()
        _update(self.overall, pred_class, pred_score, label, score)
        for i, metrics in enumerate(self.per_source):
            mask = source == i
            n = int(mask.sum())
            if n:
                _update(metrics, pred_class[mask], pred_score[mask], label[mask], score[mask])
                self.counts[i] += n

    def update_batch(self, loss: Tensor, batch_size: int, skipped: Tensor | int = 0) -> None:
        """The batch's mean loss and the number of its unreadable images."""
        self.loss.update(loss, weight=batch_size)
        self.skipped_images.update(torch.as_tensor(skipped, dtype=torch.float32))

    def compute(self) -> dict[str, Tensor]:
        out = _flatten(self.overall.compute(), self.class_names)
        counts, batches = self._synced_counts()
        if batches:  # update_batch was used (training stages; not iqs-eval)
            out["loss"] = self.loss.compute()
            out["skipped_images"] = self.skipped_images.compute()
        out["srcc_pooled"] = out.pop("srcc")
        per_source_srcc = []
        for name, metrics, n in zip(self.source_names, self.per_source, counts):
            if n < 2:  # a source absent from this stage (or a single row) has no correlation
                continue
            values = _flatten(metrics.compute(), self.class_names)
            out.update({f"{name}/{k}": v for k, v in values.items()})
            per_source_srcc.append(values["srcc"])
        # a source whose SRCC is undefined (constant predictions) is left out of the mean
        out["srcc"] = (
            torch.stack(per_source_srcc).nanmean() if per_source_srcc else out["srcc_pooled"]
        )
        return out

    def confusion_matrix(self, source: str | None = None) -> Tensor:
        """The pooled matrix (rows: true class), or one source's."""
        if source is None:
            return self.overall["confmat"].compute()
        return self.per_source[self.source_names.index(source)]["confmat"].compute()

    def reset(self) -> None:
        self.overall.reset()
        for metrics in self.per_source:
            metrics.reset()
        self.counts.zero_()
        self.loss.reset()
        self.skipped_images.reset()

    def _synced_counts(self) -> tuple[list[int], int]:
        """Rows per source and batches given to :meth:`update_batch`, summed over processes
        (one collective), so that every process computes the same metrics."""
        batches = torch.tensor([self.loss.update_count], device=self.counts.device)
        counts = torch.cat([self.counts, batches])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        *per_source, total_batches = counts.tolist()
        return per_source, total_batches


def _update(
    metrics: MetricCollection, pred_class: Tensor, pred_score: Tensor, label: Tensor, score: Tensor
) -> None:
    for name, metric in metrics.items():
        if name in ("srcc", "plcc"):
            metric.update(pred_score, score)
        else:
            metric.update(pred_class, label)


def _flatten(values: dict[str, Tensor], class_names: Sequence[str]) -> dict[str, Tensor]:
    out = {k: v for k, v in values.items() if k not in ("f1", "confmat")}
    out.update({f"f1_{c}": v for c, v in zip(class_names, values["f1"])})
    return out
