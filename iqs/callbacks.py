"""Lightning callbacks and plugins that keep long runs repeatable and their files intact."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from iqs.utils import atomic_write

log = logging.getLogger(__name__)


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (full disk, no permission); the message names it."""


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step and batch."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed: a crash or a full disk never
    leaves a half-written ``last.ckpt`` (the previous one stays)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        if get_filesystem(path).protocol not in ("file", ("file", "local")):
            return super().save_checkpoint(checkpoint, path)  # remote storage: fsspec's own
        path = Path(path)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed process
            stale.unlink(missing_ok=True)
        try:
            with atomic_write(path, "wb") as f:
                torch.save(checkpoint, f)
        except OSError as e:
            raise CheckpointSaveError(
                f"cannot write checkpoint {path}: {e.strerror or e}; earlier checkpoints are intact"
            ) from e


class EpochSeed(Callback):
    """Reseed every global random generator (dropout, ...) at the start of each epoch from
    ``seed`` and the epoch, so a resumed run continues exactly as an uninterrupted one would."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # modulo 2**32, the seeds seed_everything takes (seed=20260101 went out of range)
        epoch_seed = (self.seed * 1000 + trainer.current_epoch) % 2**32
        pl.seed_everything(epoch_seed, workers=True, verbose=False)


class DivergenceGuard(Callback):
    """Stop at the first non-finite training loss, before the broken weights are checkpointed."""

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach())
        diverged = not math.isfinite(value)
        if trainer.world_size > 1:  # every process stops together, or the others would hang
            diverged = trainer.strategy.reduce_boolean_decision(diverged, all=False)
        if diverged:
            raise DivergenceError(
                f"training loss is {value} at global step {trainer.global_step} (epoch "
                f"{trainer.current_epoch}, batch {batch_idx}); stopped before saving. Lower the "
                "learning rate or check the data; the last good checkpoint is unchanged."
            )


class InterruptCheckpoint(Callback):
    """On SIGTERM (a scheduler's stop, ``kill``), save ``interrupted.ckpt`` before exiting;
    resume with ``ckpt_path=<it>``. Lightning stops at the end of the current batch."""

    def __init__(self, dirpath: str | os.PathLike) -> None:
        self.dirpath = Path(dirpath)
        self.saved: Path | None = None

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        path = self.dirpath / "interrupted.ckpt"
        trainer.save_checkpoint(path)
        self.saved = path
        log.warning("received SIGTERM: saved %s; resume with ckpt_path=%s", path, path)
