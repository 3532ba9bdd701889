"""Distributed training: 2 CPU processes (gloo) equal one process, and write one run."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from iqs.data.dataset import EpochSampler
from iqs.models.module import read_checkpoint
from iqs.train import CONFIG_DIR, build, requeued_by_submitit, requeued_checkpoint
from tests import fake_slurm
from tests.conftest import cli_command, run_cli
from tests.wandb_files import read_offline_run


@pytest.mark.parametrize(("n", "replicas"), [(10, 2), (11, 2), (7, 3), (1, 2)])
@pytest.mark.parametrize("weighted", [False, True])
def test_epoch_sampler_shares_cover_the_epoch_once(n, replicas, weighted):
    weights = [1.0 + i % 3 for i in range(n)] if weighted else None
    whole = list(EpochSampler(n, seed=3, weights=weights))
    shares = [list(EpochSampler(n, 3, weights, replicas, rank)) for rank in range(replicas)]
    assert len({len(s) for s in shares}) == 1  # every process runs as many batches
    assert all(len(s) == len(EpochSampler(n, 3, weights, replicas, 0)) for s in shares)
    interleaved = [shares[r][i] for i in range(len(shares[0])) for r in range(replicas)]
    assert interleaved[:n] == whole  # the one-process order, split; the tail pads from its head
    assert interleaved[n:] == (whole * replicas)[: len(interleaved) - n]


def _val_metrics(checkpoint: Path) -> dict[str, float]:
    """Validation metrics of a checkpoint's weights in this one process."""
    cfg = OmegaConf.create(read_checkpoint(checkpoint)["iqs_config"])
    datamodule, model = build(cfg)
    datamodule.manifest_path = None
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    return trainer.validate(model, datamodule, ckpt_path=str(checkpoint), weights_only=True,
                            verbose=False)[0]  # fmt: skip


@pytest.mark.slow
def test_ddp_cpu_fit_equals_one_process_and_writes_one_run(tmp_path, data_dir):
    run_cli(["trainer=ddp_cpu", "trainer.max_epochs=2"], tmp_path, data_dir)
    runs = glob.glob(str(tmp_path / "train" / "runs" / "*"))
    assert len(runs) == 1  # the second process joined the first one's run directory
    run = Path(runs[0])
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "epoch_000.ckpt", "epoch_001.ckpt", "last.ckpt",
    ]  # fmt: skip
    assert (run / "train_rank1.log").is_file() and not (run / ".hydra" / "train_rank1").exists()
    offline = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(offline) == 1 and read_offline_run(offline[0]).exit_code == 0
    assert (run / "test_metrics.json").is_file()

    logged = pd.read_csv(run / "csv" / "metrics.csv").dropna(subset=["val/srcc"])
    assert len(logged) == 2
    for epoch in (0, 1):
        ddp = logged[logged["epoch"] == epoch].iloc[0]
        single = _val_metrics(run / "checkpoints" / f"epoch_{epoch:03d}.ckpt")
        for key in ("val/srcc", "val/f1_macro", "val/acc", "val/synthetic/srcc"):
            assert single[key] == pytest.approx(ddp[key], abs=1e-6), key
        # The same predictions up to float rounding (each process runs half a batch); PLCC of an
        # almost untrained model's near-constant scores magnifies that, hence a looser bound.
        assert single["val/plcc"] == pytest.approx(ddp["val/plcc"], abs=1e-3)
        assert single["val/loss"] == pytest.approx(ddp["val/loss"], abs=1e-5)


@pytest.mark.slow
def test_ddp_cpu_multirun_runs_each_job_once(tmp_path, data_dir):
    run_cli(["-m", "trainer=ddp_cpu", "seed=1,2"], tmp_path, data_dir)
    sweeps = glob.glob(str(tmp_path / "train" / "multiruns" / "*"))
    assert len(sweeps) == 1  # no child process started a sweep of its own
    jobs = sorted(p for p in Path(sweeps[0]).iterdir() if p.is_dir())
    assert [j.name for j in jobs] == ["0", "1"]
    for job, seed in zip(jobs, (1, 2)):
        assert (job / "checkpoints" / "epoch_000.ckpt").is_file()
        assert (job / "train_rank1.log").is_file()
        assert read_checkpoint(job / "checkpoints" / "last.ckpt")["iqs_config"]["seed"] == seed
        assert '"completed"' in (job / "status.json").read_text()


def test_ddp_cpu_inside_an_optuna_search_runs_the_trial_once(tmp_path, data_dir):
    run_cli(["hparams_search=optuna", "hydra.sweeper.n_trials=1", "trainer=ddp_cpu"],
            tmp_path, data_dir)  # fmt: skip
    sweeps = glob.glob(str(tmp_path / "train" / "multiruns" / "*"))
    assert len(sweeps) == 1  # no child process started a study of its own
    (job,) = [p for p in Path(sweeps[0]).iterdir() if p.is_dir()]
    assert (job / "train_rank1.log").is_file()
    assert '"completed"' in (job / "status.json").read_text()


def test_multi_node_slurm_example_is_consistent():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=ddp_slurm"], return_hydra_config=True)
    launcher, trainer = cfg.hydra.launcher, cfg.trainer
    assert trainer.strategy == "ddp" and not trainer.use_distributed_sampler
    assert launcher.nodes == trainer.num_nodes > 1
    assert launcher.tasks_per_node == launcher.gpus_per_node == trainer.devices


# experiment=ddp_slurm on 2 "nodes" of one CPU: one task per node, gloo (SyncBatchNorm needs GPUs)
SLURM_ON_CPU = [
    "-m", "experiment=ddp_slurm", "trainer.accelerator=cpu", "trainer.precision=32-true",
    "trainer.devices=1", "trainer.sync_batchnorm=false", "hydra.launcher.tasks_per_node=1",
    "hydra.launcher.gpus_per_node=0",
]  # fmt: skip


@pytest.mark.slow
def test_ddp_slurm_example_on_two_nodes_resumes_after_a_requeue(tmp_path, data_dir, monkeypatch):
    """The multi-node example, submitted through Hydra's submitit launcher to a stand-in SLURM
    (tests/fake_slurm.py) whose two "nodes" are processes here. Mid-run the job gets SIGUSR2, as
    SLURM sends it before the time limit (with timeout_min=1 submitit takes any signal for a
    timeout, so the preset's max_num_timeout decides): submitit requeues it, and the restarted
    job must continue from its last checkpoint, not train from scratch over its first attempt."""
    state = tmp_path / "slurm"
    monkeypatch.setenv("PATH", f"{fake_slurm.install(state)}{os.pathsep}{os.environ['PATH']}")
    overrides = [*SLURM_ON_CPU, "hydra.launcher.timeout_min=1", "trainer.max_epochs=4"]
    cmd = cli_command(overrides, tmp_path, data_dir)
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        deadline = time.monotonic() + 300
        while not glob.glob(str(tmp_path / "train/multiruns/*/0/checkpoints/last.ckpt")):
            assert proc.poll() is None, proc.stdout.read()[-5000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        (pids,) = state.glob("*.pids")
        fake_slurm.signal_job(state, pids.stem, signal.SIGUSR2)
        output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-5000:]

    (sweep,) = glob.glob(str(tmp_path / "train" / "multiruns" / "*"))
    job = Path(sweep) / "0"
    (submitit,) = [p for p in (Path(sweep) / ".submitit").iterdir() if p.is_dir()]  # the job
    assert sorted(p.name for p in submitit.glob("*_result.pkl")) == [
        f"{submitit.name}_0_result.pkl",
        f"{submitit.name}_1_result.pkl",
    ]  # fmt: skip  (two SLURM tasks: two "nodes")
    # (the requeue stops the tasks: whether "Requeued job" gets logged first is a race)
    assert "Calling checkpoint method" in (submitit / f"{submitit.name}_0_log.out").read_text()
    log = (job / "train.log").read_text()
    rank1 = (job / "train_rank1.log").read_text()  # rank 1 logs on its own
    assert "resuming from" in log and "resuming from" in rank1
    assert "(procid=1)" in rank1 and "(procid=1)" not in log

    # One run: the first attempt's checkpoints continued, not versioned copies from a restart
    assert sorted(p.name for p in (job / "checkpoints").iterdir()) == [
        "epoch_000.ckpt", "epoch_001.ckpt", "epoch_002.ckpt", "epoch_003.ckpt", "last.ckpt",
    ]  # fmt: skip
    offline = glob.glob(str(job / "wandb" / "offline-run-*"))
    assert len({run.rsplit("-", 1)[-1] for run in offline}) == 1  # the W&B run resumed
    sessions = [pd.read_csv(p) for p in sorted((job / "csv").glob("metrics*.csv"))]
    # (an epoch whose metrics were logged just before the requeue but whose checkpoint was not
    # written is run again: its second row counts)
    epochs = pd.concat(sessions).dropna(subset=["val/srcc"]).drop_duplicates("epoch", keep="last")
    assert len(sessions) == 2 and sorted(epochs["epoch"]) == [0, 1, 2, 3]
    assert '"completed"' in (job / "status.json").read_text()

    # gathered over both nodes: the values one process gets from the same weights
    for epoch in (0, 3):
        logged = epochs[epochs["epoch"] == epoch].iloc[0]
        single = _val_metrics(job / "checkpoints" / f"epoch_{epoch:03d}.ckpt")
        for key in ("val/srcc", "val/f1_macro", "val/acc"):
            assert single[key] == pytest.approx(logged[key], abs=1e-6), key


def test_requeued_checkpoint_is_this_runs_furthest_only_after_a_slurm_restart(
    tmp_path, monkeypatch
):
    settings = {"seed": 1, "callbacks": {"model_checkpoint": {"dirpath": None}}}
    cfg = OmegaConf.create({**settings, "ckpt_path": None, "paths": {"output_dir": str(tmp_path)}})
    (tmp_path / "checkpoints").mkdir()

    def save(name: str, step: int, **changed) -> None:
        config = {**settings, "ckpt_path": "x.ckpt", "paths": {"output_dir": "/elsewhere"},
                  **changed}  # fmt: skip
        torch.save({"iqs_config": config, "state_dict": {}, "global_step": step}, tmp_path / name)

    save("checkpoints/epoch_000.ckpt", 3)
    save("checkpoints/epoch_001.ckpt", 6)
    save("checkpoints/last.ckpt", 6)
    save("hpc_ckpt_1.ckpt", 7)  # Lightning's own requeue saves into the run directory
    save("checkpoints/interrupted.ckpt", 8)
    save("checkpoints/other.ckpt", 100, seed=2)  # another run's, left in a reused folder
    (tmp_path / "checkpoints" / "zz.ckpt").write_bytes(b"damaged")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert requeued_checkpoint(cfg) is None  # a first start trains from scratch
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert requeued_checkpoint(cfg) is None
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert requeued_checkpoint(cfg) == tmp_path / "checkpoints" / "interrupted.ckpt"
    (tmp_path / "checkpoints" / "interrupted.ckpt").unlink()
    assert requeued_checkpoint(cfg) == tmp_path / "hpc_ckpt_1.ckpt"
    (tmp_path / "hpc_ckpt_1.ckpt").unlink()
    # the same step: last.ckpt, whatever the files' times (every process picks the same one)
    os.utime(tmp_path / "checkpoints" / "epoch_001.ckpt", (9e9, 9e9))
    assert requeued_checkpoint(cfg) == tmp_path / "checkpoints" / "last.ckpt"
    empty = OmegaConf.create({"paths": {"output_dir": str(tmp_path / "x")}})
    assert requeued_checkpoint(empty) is None


def test_submitits_exit_after_a_requeue_is_told_from_other_exits(monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert requeued_by_submitit(SystemExit(-1))  # submitit's JobEnvironment._exit
    assert not requeued_by_submitit(SystemExit(1))
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    assert not requeued_by_submitit(SystemExit(-1))  # not a submitit job
