"""Sweeps: Optuna search (persisted and continued), parallel and cluster launchers."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from iqs.train import CONFIG_DIR
from tests.conftest import run_cli

SMALL = ["trainer.max_epochs=1", "logger=csv", "+trainer.limit_train_batches=2",
         "+trainer.limit_val_batches=2"]  # fmt: skip


@pytest.mark.slow
def test_optuna_search_finds_a_best_trial_and_continues_from_sqlite(tmp_path, data_dir):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["hparams_search=optuna", "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.study_name=test", *SMALL]  # fmt: skip
    proc = run_cli(args, tmp_path / "logs", data_dir)
    assert "Best value" in proc.stdout + proc.stderr
    (results,) = glob.glob(str(tmp_path / "logs/train/multiruns/*/optimization_results.yaml"))
    best = yaml.safe_load(Path(results).read_text())
    assert {"model", "loss", "optimizer.lr"} <= set(best["best_params"])
    values = [
        json.loads(Path(p).read_text())["metrics"]
        for p in glob.glob(str(tmp_path / "logs/train/multiruns/*/*/test_metrics.json"))
    ]
    assert len(values) == 3

    run_cli([*args[:1], "hydra.sweeper.n_trials=1", *args[2:]], tmp_path / "logs2", data_dir)
    import optuna

    study = optuna.load_study(study_name="test", storage=storage)
    assert len(study.trials) == 4  # continued, not restarted
    assert best["best_value"] == pytest.approx(
        max(t.value for t in study.trials[:3] if t.value is not None)
    )


@pytest.mark.slow
def test_parallel_launcher_runs_both_jobs(tmp_path, data_dir):
    run_cli(["-m", "hydra/launcher=parallel", "model=mobilenetv3_small_100,resnet18", *SMALL],
            tmp_path / "logs", data_dir)  # fmt: skip
    jobs = sorted(glob.glob(str(tmp_path / "logs/train/multiruns/*/*/test_metrics.json")))
    assert len(jobs) == 2
    statuses = glob.glob(str(tmp_path / "logs/train/multiruns/*/*/status.json"))
    assert [json.loads(Path(p).read_text())["status"] for p in statuses] == ["completed"] * 2


def test_slurm_preset_composes_with_gpu_and_time_settings():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["hydra/launcher=slurm", "trainer=gpu", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.timeout_min == 720
    assert launcher.partition == "gpu" and cfg.trainer.accelerator == "gpu"
