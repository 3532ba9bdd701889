"""The LightningModule: backbone + head, trained with a QualityLoss, evaluated by QualityMetrics."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor, nn
from torchmetrics import MaxMetric

from iqs.data.labels import CLASS_NAMES
from iqs.metrics import QualityMetrics
from iqs.models.losses import QualityLoss

Batch = dict[str, Tensor]
SAMPLES_LOGGED = 16


class IQSModule(pl.LightningModule):
    """Photo -> logits over (rejected, pending, accepted), plus a quality score.

    Args:
        backbone: a timm feature extractor (see ``create_backbone``).
        head: ``head(in_features, out_features)`` builds the head (a Hydra partial).
        loss: the training loss; it also defines the predicted score.
        optimizer: ``optimizer(params)`` (a Hydra partial).
        scheduler: ``scheduler(optimizer)`` or ``None``; stepped every epoch.
        source_names: names of the data sources, for per-source metrics.
        run_config: the run's resolved configuration, stored in every checkpoint so that a model can
            be rebuilt from its state dict and config alone.
        monitor: the metric a plateau scheduler watches (the run's ``optimized_metric``).
        channels_last: NHWC memory layout for backbone and inputs (faster convolutions on
            recent GPUs with mixed precision).
        compile: ``torch.compile`` the backbone (in place: checkpoint keys do not change).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: Callable[..., nn.Module],
        loss: QualityLoss,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        source_names: Sequence[str] = ("synthetic",),
        run_config: dict[str, Any] | None = None,
        monitor: str = "val/srcc",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        # timm: models with a pre-logits layer (MobileNetV3, ...) output head_hidden_size features
        features = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        self.head = head(in_features=features, out_features=loss.num_outputs)
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.source_names = list(source_names)
        self.run_config = run_config
        self.monitor = monitor
        self.channels_last = channels_last
        self.compile_backbone = compile
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        self.train_metrics = QualityMetrics(self.source_names)
        self.val_metrics = QualityMetrics(self.source_names)
        self.test_metrics = QualityMetrics(self.source_names)
        self.val_best = nn.ModuleDict({k: MaxMetric() for k in ("srcc", "f1_macro")})
        for best in self.val_best.values():
            best.persistent(True)  # a resumed run keeps its best-so-far values
        self.confusion_matrices: dict[str, list[list[int]]] = {}
        # The first validation batch's first images, logged to W&B as a table each epoch.
        self._samples: dict[str, Tensor] | None = None

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if stage == "fit" and hasattr(self.loss, "set_class_counts") and datamodule is not None:
            self.loss.set_class_counts(datamodule.class_counts("train"))

    def stage_metrics(self, stage: str) -> QualityMetrics:
        return getattr(self, f"{stage}_metrics")

    def configure_model(self) -> None:
        if self.compile_backbone and not getattr(self, "_backbone_compiled", False):
            self.backbone.compile()
            self._backbone_compiled = True

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone(x))

    # -- steps --------------------------------------------------------------------------------

    def _step(self, batch: Batch, stage: str) -> Tensor | None:
        if "image" not in batch:  # every image of the batch was unreadable: count them
            self.stage_metrics(stage).skipped_images.update(batch["skipped"].float())
            if stage == "train" and _processes() > 1:
                # Every process must run backward (DDP's gradient all-reduce) and reach the
                # divergence guard's collective, or the others wait forever: a zero loss.
                return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0
            return None
        outputs = self(batch["image"])
        loss = self.loss(outputs, batch["label"], batch["score"])
        with torch.no_grad():
            pred_class = self.loss.class_logits(outputs).argmax(dim=1)
            pred_score = self.loss.predict_score(outputs)
        self.stage_metrics(stage).update(
            pred_class, pred_score, batch["label"], batch["score"], batch["source"]
        )
        if stage == "val" and self._samples is None:
            self._keep_samples(batch, pred_class, pred_score)
        n = len(batch["label"])
        self.stage_metrics(stage).update_batch(loss.detach(), n, batch.get("skipped", 0))
        if stage == "train":  # per step, this process only (no collective inside a step)
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True,
                     batch_size=n)  # fmt: skip
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        return self._step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_probs(self, x: Tensor) -> Tensor:
        """Class probabilities (N x 3) of normalised images."""
        return self.loss.class_logits(self(x)).float().softmax(dim=1)

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        outputs = self(batch["image"])
        return {
            "probs": self.loss.class_logits(outputs).float().softmax(dim=1),
            "score": self.loss.predict_score(outputs),
        }

    # -- epoch ends ---------------------------------------------------------------------------

    def _epoch_end(self, stage: str) -> dict[str, Tensor]:
        metrics = self.stage_metrics(stage)
        values = metrics.compute()
        # Computed here, where every process runs the same collectives in the same order, and
        # logged without sync_dist: Lightning reduces a synced value when it is first read,
        # which its progress bar does on rank zero only, and DDP would hang.
        shown = ("srcc", "f1_macro")
        self.log_dict({f"{stage}/{k}": values[k] for k in shown}, prog_bar=True)
        self.log_dict({f"{stage}/{k}": v for k, v in values.items() if k not in shown})
        if stage != "train":
            self._log_confusion_matrix(stage, metrics.confusion_matrix())
        metrics.reset()
        return values

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_start(self) -> None:
        self._samples = None

    def on_validation_epoch_end(self) -> None:
        values = self._epoch_end("val")
        if self.trainer.sanity_checking:
            return
        self._log_samples()
        for key, best in self.val_best.items():
            if not torch.isnan(values[key]):
                best.update(values[key])
            self.log(f"val/{key}_best", best.compute())

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def _keep_samples(self, batch: Batch, pred_class: Tensor, pred_score: Tensor) -> None:
        if not any(isinstance(lg, WandbLogger) for lg in self.loggers):
            return
        n = SAMPLES_LOGGED
        self._samples = {
            "image": batch["image"][:n].detach().float().cpu(),
            "label": batch["label"][:n].cpu(),
            "score": batch["score"][:n].float().cpu(),
            "pred_class": pred_class[:n].cpu(),
            "pred_score": pred_score[:n].float().cpu(),
        }

    def _log_samples(self) -> None:
        """A W&B table of validation photos: thumbnail, true and predicted label, scores."""
        if self._samples is None:
            return
        import wandb

        dm = getattr(self.trainer, "datamodule", None)
        mean = torch.tensor(getattr(dm, "mean", (0.0, 0.0, 0.0))).view(3, 1, 1)
        std = torch.tensor(getattr(dm, "std", (1.0, 1.0, 1.0))).view(3, 1, 1)
        s = self._samples
        rows = []
        for i in range(len(s["label"])):
            pixels = ((s["image"][i] * std + mean).clamp(0, 1) * 255).byte().permute(1, 2, 0)
            rows.append([
                wandb.Image(pixels.numpy()),
                CLASS_NAMES[int(s["label"][i])],
                CLASS_NAMES[int(s["pred_class"][i])],
                float(s["pred_score"][i]),
                float(s["score"][i]),
            ])  # fmt: skip
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(
                    key="val/samples",
                    columns=["photo", "true label", "predicted label", "predicted score",
                             "true score"],
                    data=rows,
                )  # fmt: skip

    def _log_confusion_matrix(self, stage: str, matrix: Tensor) -> None:
        self.confusion_matrices[stage] = matrix.tolist()
        if self.trainer.sanity_checking:
            return
        rows = [[CLASS_NAMES[i], *row] for i, row in enumerate(matrix.tolist())]
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(
                    key=f"{stage}/confusion_matrix",
                    columns=["true \\ predicted", *CLASS_NAMES],
                    data=rows,
                )

    # -- optimisation -------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        config = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.monitor
        return {"optimizer": optimizer, "lr_scheduler": config}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint["iqs_config"] = self.run_config
        checkpoint["iqs_sources"] = self.source_names


def build_model(cfg: DictConfig, source_names: Sequence[str]) -> IQSModule:
    """The model of a run configuration (``model``, ``loss``, ``optimizer``, ``scheduler``)."""
    scheduler = cfg.get("scheduler")
    return instantiate(
        cfg.model,
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(scheduler) if scheduler and "_target_" in scheduler else None,
        source_names=list(source_names),
    )


class CheckpointError(RuntimeError):
    """A file that is not an iqs checkpoint, or one that cannot be rebuilt."""


def _processes() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def read_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict:
    """The checkpoint's contents, loaded with ``weights_only=True``: plain data only, so a file
    from an unknown source cannot run code. Errors name the file and what is wrong with it.
    ``mmap``: tensors are read from the file only when used (cheap when only metadata is)."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds pickled objects, not just weights and plain data; refused, as loading "
            f"it could run code. Only load checkpoints made by iqs. ({str(e).splitlines()[0]})"
        ) from e
    except Exception as e:  # a truncated or foreign file raises many types
        raise CheckpointError(
            f"{path} is not a readable checkpoint (damaged or truncated?): {e}"
        ) from e
    if not isinstance(ckpt, dict) or "iqs_config" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not an iqs checkpoint (no iqs_config / state_dict)")
    return ckpt


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[IQSModule, DictConfig]:
    """Rebuild a trained model from a checkpoint alone (its stored run config + weights).

    No pretrained weights are fetched: the checkpoint's own weights replace them.
    """
    ckpt = read_checkpoint(path, map_location)
    cfg = OmegaConf.create(ckpt["iqs_config"])
    cfg.model.backbone.pretrained = False
    cfg.model.backbone.weights = None
    if "compile" in cfg.model:
        cfg.model.compile = False  # inference and export trace the plain module
    model = build_model(cfg, ckpt.get("iqs_sources") or list(cfg.data.sources))
    # Metric accumulators are not weights (older checkpoints stored one per source, and no
    # best-so-far values).
    state = {k: v for k, v in ckpt["state_dict"].items() if not k.endswith("_metrics.counts")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("val_best.")]
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not fit its own config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    model.run_config = ckpt["iqs_config"]
    return model.eval(), cfg
