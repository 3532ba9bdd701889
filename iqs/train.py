"""`iqs-train`: fit a model on a data mix, then test its best checkpoint.

iqs-train                                   # the default configuration (conf/train.yaml)
iqs-train model=resnet18 trainer.max_epochs=5
iqs-train -m model=mobilenetv3_small_100,resnet18      # one run per choice
"""

from __future__ import annotations

import json
import logging
import math
import netrc
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from iqs.callbacks import CheckpointSaveError, DivergenceError
from iqs.data.datamodule import IQSDataModule
from iqs.data.images import reuse_freed_memory
from iqs.data.manifest import ManifestError
from iqs.data.sources.base import SourceError
from iqs.distributed import (
    distributed_job,
    is_rank_zero,
    log_to_rank_file,
    use_hydra_child_command,
)
from iqs.models.backbones import input_config
from iqs.models.module import CheckpointError, IQSModule, build_model, read_checkpoint
from iqs.utils import atomic_write_text

log = logging.getLogger(__name__)

# Metrics whose best value W&B keeps in the run summary (beside the last value).
SUMMARY_METRICS = {
    "val/srcc": "max,last",
    "val/f1_macro": "max,last",
    "val/acc": "max,last",
    "val/plcc": "max,last",
    "val/loss": "min,last",
    "train/loss": "min,last",
}


def build(cfg: DictConfig) -> tuple[IQSDataModule, IQSModule]:
    """The data module and model of a configuration (no trainer, no loggers)."""
    inp = input_config(cfg.model.backbone, cfg.data.get("image_size"))
    datamodule: IQSDataModule = instantiate(
        cfg.data, image_size=inp.size, mean=inp.mean, std=inp.std, _convert_="partial"
    )
    model = build_model(cfg, datamodule.source_names)
    # Set after instantiation: Hydra would try to instantiate the _target_ keys inside it.
    model.run_config = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    return datamodule, model


def wandb_has_api_key() -> bool:
    """True when W&B can authenticate: WANDB_API_KEY, or a `wandb login` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def _wandb_settings(logger_cfg: DictConfig, cfg: DictConfig) -> DictConfig:
    """Fill the W&B keys left null: offline mode, run name and group."""
    logger_cfg = logger_cfg.copy()
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    if logger_cfg.get("offline") is None:
        mode = os.environ.get("WANDB_MODE")
        logger_cfg.offline = mode in ("offline", "dryrun") if mode else not wandb_has_api_key()
        if logger_cfg.offline:
            log.info(
                "W&B: no API key found, logging offline to %s/wandb. Upload later with: "
                "wandb sync %s/wandb/offline-run-*",
                cfg.paths.output_dir,
                cfg.paths.output_dir,
            )
    if logger_cfg.get("name") is None:
        overrides = hydra_cfg.job.override_dirname if hydra_cfg else ""
        logger_cfg.name = overrides or cfg.task_name
    if logger_cfg.get("group") is None:
        if hydra_cfg and hydra_cfg.mode == RunMode.MULTIRUN:
            logger_cfg.group = f"sweep-{Path(hydra_cfg.sweep.dir).name}"
        else:
            experiment = hydra_cfg.runtime.choices.get("experiment") if hydra_cfg else None
            logger_cfg.group = experiment or cfg.task_name
    if logger_cfg.get("id") is None and cfg.get("ckpt_path") and cfg.get("train", True):
        earlier = _earlier_wandb_run(Path(cfg.paths.output_dir) / "wandb")
        if earlier:  # resuming in place: the same W&B run, not a second one
            logger_cfg.id, logger_cfg.resume = earlier, logger_cfg.get("resume") or "allow"
            log.info("W&B: resuming run %s", earlier)
    return logger_cfg


def _earlier_wandb_run(folder: Path) -> str | None:
    """The id of the newest W&B run in ``folder`` (``run-<time>-<id>``, ``offline-run-...``)."""
    runs = sorted(folder.glob("*run-*-*"), key=lambda p: p.name.removeprefix("offline-"))
    runs = [p for p in runs if p.is_dir()]
    return runs[-1].name.rsplit("-", 1)[-1] if runs else None


def instantiate_loggers(cfg: DictConfig) -> list[Logger]:
    loggers = []
    for key, logger_cfg in (cfg.get("logger") or {}).items():
        if not isinstance(logger_cfg, DictConfig) or "_target_" not in logger_cfg:
            continue
        if logger_cfg._target_.endswith("WandbLogger"):
            logger_cfg = _wandb_settings(logger_cfg, cfg)
        log.debug("logger %s: %s", key, logger_cfg._target_)
        logger = instantiate(logger_cfg)
        if isinstance(logger, CSVLogger) and cfg.get("ckpt_path") and cfg.get("train", True):
            _keep_earlier_metrics(Path(logger.log_dir))
        loggers.append(logger)
    return loggers


def _keep_earlier_metrics(log_dir: Path) -> None:
    """Before a run resumes in its own folder: move ``metrics.csv`` to ``metrics.<n>.csv``,
    which CSVLogger would otherwise overwrite (`iqs-compare` reads them all, in order)."""
    current = log_dir / "metrics.csv"
    if not current.is_file() or not is_rank_zero():
        return
    n = 1 + max((int(p.suffixes[0][1:]) for p in log_dir.glob("metrics.*.csv")
                 if p.suffixes[0][1:].isdigit()), default=0)  # fmt: skip
    current.rename(log_dir / f"metrics.{n}.csv")
    log.info("resuming: the metrics logged so far are kept in %s", log_dir / f"metrics.{n}.csv")


def instantiate_callbacks(cfg: DictConfig) -> list[Callback]:
    return [
        instantiate(c)
        for c in (cfg.get("callbacks") or {}).values()
        if isinstance(c, DictConfig) and "_target_" in c
    ]


def _choices() -> dict[str, str]:
    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices
    return {k: str(v) for k, v in choices.items() if not k.startswith("hydra") and v is not None}


def _define_wandb_summaries(loggers: list[Logger]) -> None:
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            for metric, goal in SUMMARY_METRICS.items():
                logger.experiment.define_metric(metric, summary=goal)


def _finish_wandb(exit_code: int) -> None:
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


class ConfigError(ValueError):
    """Settings that contradict each other; the message says which key to change."""


def check_optimized_mode(cfg: DictConfig) -> None:
    """``optimized_mode`` is max or min, min for a loss, and a search optimises the same way:
    a wrong mode keeps the worst checkpoint as "best" and tests it."""
    metric, mode = cfg.get("optimized_metric"), cfg.get("optimized_mode", "max")
    if mode not in ("max", "min"):
        raise ConfigError(f"optimized_mode must be max or min, got {mode!r}")
    if metric and "loss" in str(metric).rsplit("/", 1)[-1] and mode == "max":
        raise ConfigError(f"optimized_metric={metric} is lower-is-better: add optimized_mode=min")
    direction = None
    if HydraConfig.initialized():
        direction = OmegaConf.select(HydraConfig.get(), "sweeper.direction", default=None)
    if isinstance(direction, str) and direction != f"{mode}imize":
        raise ConfigError(
            f"hydra.sweeper.direction={direction} but optimized_mode={mode}: set "
            f"hydra.sweeper.direction={mode}imize"
        )


def train(cfg: DictConfig) -> float | None:
    """Fit and test as configured; return the best value of ``optimized_metric``."""
    check_optimized_mode(cfg)
    if cfg.get("train", True) and (resume := requeued_checkpoint(cfg)):
        log.warning("SLURM restarted this job (requeued): resuming from %s", resume)
        cfg.ckpt_path = str(resume)
    pl.seed_everything(cfg.seed, workers=True)
    if HydraConfig.initialized():
        use_hydra_child_command()  # DDP children join this run's directory
    datamodule, model = build(cfg)
    # Read the data before anything else starts: a missing data set fails here, in one line,
    # and the summary of what will be trained on opens the log.
    datamodule.prepare_data()
    datamodule.setup()
    loggers = instantiate_loggers(cfg)
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=instantiate_callbacks(cfg), logger=loggers or False
    )
    # The resolved config, plus the group choices (model=resnet18, loss=emd, data=combined) as
    # top-level keys: what a sweep's dashboard is sliced by.
    params = {**(model.run_config or {}), "choices": _choices()}
    for logger in loggers:
        logger.log_hyperparams(params)
    _define_wandb_summaries(loggers)

    if cfg.get("ckpt_path"):  # a damaged, foreign or other model's file fails here, clearly
        _require_fitting_checkpoint(model, read_checkpoint(cfg.ckpt_path), cfg.ckpt_path)
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)

    best = _best_checkpoint(trainer)
    # before testing, which clears the logged metrics (without checkpoints: the last value)
    value = _metric_value(trainer, cfg.get("optimized_metric"), cfg.get("train", True))
    if cfg.get("test", True):
        ckpt = best if best else (None if cfg.get("train", True) else cfg.get("ckpt_path"))
        if best is None and cfg.get("train", True):
            log.warning("no best checkpoint (checkpointing off?): testing the current weights")
        results = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        _write_results(cfg, results[0] if results else {}, model, ckpt)
    return value


def requeued_checkpoint(cfg: DictConfig) -> Path | None:
    """This run's furthest checkpoint when SLURM has restarted its job (requeued at its time
    limit or on preemption: ``SLURM_RESTART_COUNT`` > 0), else None. The restarted job runs the
    same command in the same run directory; without this it would train from scratch over the
    checkpoints and metrics of its first attempt.

    Only checkpoints trained with this run's settings count (a reused folder may hold another
    run's), and the furthest is the one with the most optimiser steps, not the newest file:
    every process of a distributed job must pick the same one, whatever its clock or cache."""
    if int(os.environ.get("SLURM_RESTART_COUNT") or 0) < 1:
        return None
    run_dir = Path(cfg.paths.output_dir)
    folders = {run_dir / "checkpoints", run_dir}  # run_dir: Lightning's own hpc_ckpt_<n>.ckpt
    for callback in (cfg.get("callbacks") or {}).values():
        if isinstance(callback, DictConfig) and callback.get("dirpath"):
            folders.add(Path(callback.dirpath))  # epoch, last and interrupted checkpoints
    settings = _run_settings(OmegaConf.to_container(cfg, resolve=True))
    furthest, furthest_key = None, None
    for path in sorted({p for folder in folders for p in folder.glob("*.ckpt")}):
        try:
            ckpt = read_checkpoint(path, mmap=True)
        except CheckpointError as e:  # damaged, foreign: not this run's progress
            log.warning("not resuming from %s: %s", path, e)
            continue
        if _run_settings(ckpt["iqs_config"]) != settings:
            log.warning("not resuming from %s: trained with other settings", path)
            continue
        key = (int(ckpt.get("global_step", -1)), path.name == "last.ckpt", path.name)
        if furthest_key is None or key > furthest_key:
            furthest, furthest_key = path, key
    return furthest


def _run_settings(config: object) -> object:
    """A run's settings as stored in its checkpoints, less what a resume changes."""
    if not isinstance(config, dict):
        return None
    return {k: v for k, v in config.items() if k not in ("ckpt_path", "paths")}


def _require_fitting_checkpoint(model: IQSModule, checkpoint: dict, path: str) -> None:
    try:
        model.load_state_dict(checkpoint["state_dict"])  # the weights fit would load anyway
    except RuntimeError as e:
        trained = OmegaConf.select(OmegaConf.create(checkpoint["iqs_config"]),
                                   "model.backbone.name", default="?")  # fmt: skip
        raise CheckpointError(
            f"{path} does not fit this run's model (trained as model.backbone.name={trained}; "
            f"{str(e).strip().splitlines()[0]}): resume with the overrides it was trained with"
        ) from None


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.best_model_path:
        return callback.best_model_path
    return None


def _metric_value(trainer: pl.Trainer, name: str | None, trained: bool) -> float | None:
    if not name or not trained:
        return None
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.best_model_score is not None:
        return float(callback.best_model_score)
    value = trainer.callback_metrics.get(name)
    if value is None:
        log.warning("optimized_metric %r was never logged", name)
        return None
    return float(value)


def _write_results(
    cfg: DictConfig, metrics: dict[str, float], model: IQSModule, ckpt: str | None
) -> None:
    if not is_rank_zero():
        return
    results = {
        "checkpoint": ckpt,
        "metrics": {k: (None if math.isnan(v) else v) for k, v in metrics.items()},
        "confusion_matrix": model.confusion_matrices.get("test"),
    }
    path = Path(cfg.paths.output_dir) / "test_metrics.json"
    atomic_write_text(path, json.dumps(results, indent=2))
    log.info("test metrics written to %s", path)


# conf/ sits beside the package in the repository (installed editable, `pip install -e .`).
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def _write_status(cfg: DictConfig, status: str, started: float, **extra: object) -> None:
    """``status.json`` in the run directory: running, completed or failed (with the error),
    and the wall time, so that `iqs-compare` can list failed jobs of a sweep."""
    if not is_rank_zero():
        return
    path = Path(cfg.paths.output_dir) / "status.json"
    record = {"status": status, "started": started, "wall_time_s": time.time() - started,
              "host": socket.gethostname(), "pid": os.getpid(), **extra}  # fmt: skip
    atomic_write_text(path, json.dumps(record, indent=2, default=str))


def requeued_by_submitit(exit: SystemExit) -> bool:
    """True for the exit submitit makes right after requeueing its SLURM job (time limit,
    preemption): the job will run again and resume (:func:`requeued_checkpoint`)."""
    return exit.code == -1 and os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    started = time.time()
    log_to_rank_file()  # processes started by SLURM share the run directory
    reuse_freed_memory()  # CPU steps and loader workers (forked after this) fault less
    _write_status(cfg, "running", started)
    try:
        with distributed_job():
            value = train(cfg)
    except (SourceError, ManifestError, CheckpointError, CheckpointSaveError, DivergenceError,
            ConfigError) as e:  # fmt: skip
        # The message names the file, row or step and what to do: a traceback adds nothing.
        _finish_wandb(exit_code=1)
        _write_status(cfg, "failed", started, error=f"{type(e).__name__}: {e}")
        log.error("%s", e)
        if _multirun():
            raise  # Hydra records the failed job and runs the others
        raise SystemExit(1) from None
    except SIGTERMException:
        _finish_wandb(exit_code=143)
        _write_status(cfg, "interrupted", started)
        raise SystemExit(143) from None
    except SystemExit as e:
        # Best effort: SLURM stops a requeued job's processes, possibly before this runs.
        if requeued_by_submitit(e):
            log.warning("SLURM requeued this job; it will resume from its furthest checkpoint")
            _finish_wandb(exit_code=143)
            _write_status(cfg, "interrupted", started, error="requeued by SLURM")
        else:
            _finish_wandb(exit_code=1)
            _write_status(cfg, "failed", started, error=f"SystemExit: {e.code}")
        raise
    except BaseException as e:
        _finish_wandb(exit_code=1)
        _write_status(cfg, "failed", started, error=f"{type(e).__name__}: {e}")
        raise
    _finish_wandb(exit_code=0)
    _write_status(cfg, "completed", started, optimized_metric=cfg.get("optimized_metric"),
                  value=value)  # fmt: skip
    return value


if __name__ == "__main__":
    main()
