"""Shared fixtures: a tiny built-in data set and helpers to run iqs-train in and out of process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from iqs.train import CONFIG_DIR

# A few crops of every built-in photo at 64 px: every part of the pipeline runs, in seconds.
TINY_SYNTHETIC = [
    "data.sources.synthetic.crops_per_photo=4",
    "data.sources.synthetic.variants_per_crop=2",
    "data.sources.synthetic.dead_leaves=4",
]
TINY_RUN = [
    "data.image_size=64",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "data.num_workers=0",
]
TINY = TINY_SYNTHETIC + TINY_RUN


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for the whole session, so the tiny synthetic set is generated once."""
    path = tmp_path_factory.mktemp("data")
    os.environ["IQS_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def trees(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny image trees of every real data set, each in its distributed layout."""
    from tests import datasets as ds

    root = tmp_path_factory.mktemp("datasets")
    ava_ids = list(range(1000, 1016))
    ds.koniq_tree(root / "koniq10k")
    ds.spaq_tree(root / "spaq")
    ds.ava_tree(root / "ava", ava_ids, test_ids=ava_ids[:4])
    # EVA shares ids with AVA: two in AVA's official test split, two in its train part.
    ds.eva_tree(root / "eva", [1000, 1001, 1008, 1009, 5000, 5001, 5002, 5003, 5004, 5005])
    ds.kadid_tree(root / "kadid10k")
    ds.clive_tree(root / "clive")
    ds.folder_tree(root / "folder")
    return root


@pytest.fixture(autouse=True)
def _offline_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never talk to a W&B server, even on a machine that has a key."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")


def compose_group(group: str, name: str, *overrides: str) -> DictConfig:
    """One config group's choice, composed by Hydra (defaults lists included)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"{group}={name}", *overrides])
    return cfg[group]


def compose_train(
    overrides: list[str], output_dir: Path, data_dir: Path, tiny: list[str] = TINY
) -> DictConfig:
    """The train config as `iqs-train` would build it, with the run directory set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[*tiny, f"paths.data_dir={data_dir}", *overrides],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


def compose_eval(overrides: list[str], output_dir: Path, data_dir: Path) -> DictConfig:
    """The `iqs-eval` config, with its run directory set."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="eval",
            overrides=[f"paths.data_dir={data_dir}", *overrides],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


def cli_command(args: list[str], log_dir: Path, data_dir: Path) -> list[str]:
    """`python -m iqs.train` as a user would run it, with tiny settings (``args`` override them)."""
    flags = [a for a in args if a.startswith("-")]  # -m: argparse wants flags first
    overrides = [a for a in args if not a.startswith("-")]
    return [
        sys.executable, "-m", "iqs.train", *flags, *TINY, *overrides,
        f"paths.log_dir={log_dir}", f"paths.data_dir={data_dir}",
    ]  # fmt: skip


def run_cli(
    args: list[str], log_dir: Path, data_dir: Path, check: bool = True
) -> subprocess.CompletedProcess:
    """Run :func:`cli_command` and wait for it."""
    cmd = cli_command(args, log_dir, data_dir)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc
