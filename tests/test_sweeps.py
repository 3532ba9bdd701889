"""Sweeps: Optuna search (persisted and continued), parallel and cluster launchers."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from iqs.models.module import read_checkpoint
from iqs.train import CONFIG_DIR
from tests import fake_slurm
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


@pytest.mark.slow
def test_slurm_launcher_runs_a_sweep_as_a_job_array(tmp_path, data_dir, monkeypatch):
    """Through Hydra's submitit launcher to a stand-in SLURM (tests/fake_slurm.py): a sweep of
    two jobs is one job array; each task trains in its own run directory, and Hydra collects
    both results."""
    state = tmp_path / "slurm"
    monkeypatch.setenv("PATH", f"{fake_slurm.install(state)}{os.pathsep}{os.environ['PATH']}")
    run_cli(["-m", "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "seed=1,2", *SMALL],
            tmp_path / "logs", data_dir)  # fmt: skip
    jobs = sorted(p.stem for p in state.glob("*.state"))
    array = jobs[0].split("_")[0]
    assert jobs == [f"{array}_0", f"{array}_1"]  # one array of two tasks
    (sweep,) = glob.glob(str(tmp_path / "logs/train/multiruns/*"))
    for job, seed in (("0", 1), ("1", 2)):
        run = Path(sweep) / job
        status = json.loads((run / "status.json").read_text())
        assert status["status"] == "completed" and status["value"] is not None
        assert read_checkpoint(run / "checkpoints" / "last.ckpt")["iqs_config"]["seed"] == seed
        assert (
            Path(sweep) / ".submitit" / f"{array}_{job}" / f"{array}_{job}_0_result.pkl"
        ).is_file()
