"""The train entry point end to end, on tiny built-in data, on CPU."""

import glob
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from iqs.train import train
from tests.conftest import compose_train, run_cli
from tests.wandb_files import read_offline_run

pytestmark = pytest.mark.slow


def test_fast_dev_run(tmp_path, data_dir):
    cfg = compose_train(["debug=fdr"], tmp_path / "run", data_dir)
    train(cfg)
    assert (tmp_path / "run" / "manifest.csv").is_file()
    assert json.loads((tmp_path / "run" / "test_metrics.json").read_text())["metrics"]


def test_checkpoint_per_epoch_and_resume(tmp_path, data_dir):
    cfg = compose_train(["trainer.max_epochs=2", "logger=csv"], tmp_path / "a", data_dir)
    value = train(cfg)
    ckpts = tmp_path / "a" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "epoch_000.ckpt", "epoch_001.ckpt", "last.ckpt",
    ]  # fmt: skip
    assert value is not None
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1
    assert last["iqs_config"]["model"]["backbone"]["name"] == "mobilenetv3_small_100"

    resumed = compose_train(
        ["trainer.max_epochs=3", "logger=csv", f"ckpt_path={ckpts / 'last.ckpt'}"],
        tmp_path / "b",
        data_dir,
    )
    train(resumed)
    names = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert names == ["epoch_002.ckpt", "last.ckpt"]  # continued at epoch 2, not from scratch
    state = torch.load(tmp_path / "b" / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] > last["global_step"]
    metrics = pd.read_csv(tmp_path / "b" / "csv" / "metrics.csv")
    assert metrics["epoch"].dropna().min() >= 2


def test_wandb_offline_run_holds_metrics_and_config(tmp_path, data_dir):
    cfg = compose_train(["trainer.max_epochs=2"], tmp_path / "run", data_dir)
    train(cfg)
    import wandb

    wandb.finish()
    files = glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    run = read_offline_run(files[0])
    assert {"val/srcc", "val/f1_macro", "val/synthetic/srcc"} <= run.history_keys
    assert "max" in run.summary["val/srcc"]
    assert run.config["model"]["backbone"]["name"] == "mobilenetv3_small_100"
    assert run.tags == ["dev"]
    assert (tmp_path / "run" / "csv" / "metrics.csv").is_file()  # CSV logger beside W&B

    # resumed in its own folder: the same W&B run continues (not a second run)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    train(compose_train(["trainer.max_epochs=3", f"ckpt_path={last}"], tmp_path / "run", data_dir))
    wandb.finish()
    runs = sorted(glob.glob(str(tmp_path / "run" / "wandb" / "offline-run-*")))
    assert len(runs) == 2 and len({r.rsplit("-", 1)[-1] for r in runs}) == 1


def test_two_job_multirun(tmp_path, data_dir):
    proc = run_cli(
        ["-m", "model=mobilenetv3_small_100,resnet18", "trainer.max_epochs=1", "tags=[sweep_a]"],
        tmp_path,
        data_dir,
    )
    jobs = sorted(Path(p) for p in glob.glob(str(tmp_path / "train" / "multiruns" / "*" / "[0-9]")))
    assert len(jobs) == 2, proc.stdout[-2000:]
    groups = set()
    for job, backbone in zip(jobs, ["mobilenetv3_small_100", "resnet18"]):
        assert (job / "checkpoints" / "epoch_000.ckpt").is_file()
        assert (job / "csv" / "metrics.csv").is_file()
        runs = glob.glob(str(job / "wandb" / "offline-run-*" / "run-*.wandb"))
        assert len(runs) == 1
        run = read_offline_run(runs[0])
        assert run.config["model"]["backbone"]["name"] == backbone
        assert f"model={backbone}" in run.name.split(",")
        assert "paths." not in run.name
        assert run.exit_code == 0
        assert run.tags == ["sweep_a"]
        assert run.config["choices"]["model"] == backbone  # sliceable by group choice
        assert run.config["choices"]["loss"] == "cross_entropy"
        assert {"val/srcc", "val/f1_macro"} <= set(run.summary)
        # the table of sample predictions (W&B stores a table as a file reference)
        assert any(k.startswith("val/samples/") for k in run.history_keys)
        groups.add(run.group)
    assert len(groups) == 1 and groups.pop().startswith("sweep-")


def test_a_run_without_checkpoints_still_returns_its_optimized_metric(tmp_path, data_dir):
    # testing clears the logged metrics: the value is read before it (sweepers need it)
    cfg = compose_train(["debug=overfit", "trainer.max_epochs=2", "logger=csv"], tmp_path, data_dir)
    assert cfg.callbacks.model_checkpoint is None
    value = train(cfg)
    assert value is not None and -1 <= value <= 1


def test_multirun_from_the_command_line_with_default_paths(tmp_path, data_dir):
    """As the README shows it, no path given: the sweep directory resolves before Hydra's
    runtime config exists (with ${hydra:runtime.cwd} in paths it failed at once)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "IQS_DATA_DIR": str(data_dir)}
    env.pop("IQS_ROOT", None), env.pop("IQS_LOG_DIR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "iqs.train", "-m", "seed=1,2", "debug=fdr", "logger=csv"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(tmp_path.glob("outputs/debug/multiruns/*/[0-9]"))
    assert [j.name for j in jobs] == ["0", "1"]
    assert all((j / "test_metrics.json").is_file() for j in jobs)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=nope", "Could not find 'model/nope'"),
        ("trainer.max_epoch=3", "Could not override 'trainer.max_epoch'"),
    ],
)
def test_mistyped_override_fails_clearly(tmp_path, data_dir, override, message):
    proc = run_cli([override], tmp_path, data_dir, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout


def test_same_seed_same_metrics_on_cpu(tmp_path, data_dir):
    values = []
    for name in ("a", "b"):
        cfg = compose_train(["logger=csv", "callbacks=none"], tmp_path / name, data_dir)
        train(cfg)
        metrics = json.loads((tmp_path / name / "test_metrics.json").read_text())["metrics"]
        values.append(metrics)
    assert values[0] == values[1]


@pytest.mark.parametrize("loss", ["weighted_cross_entropy", "corn", "multitask"])
def test_fast_dev_run_with_other_losses(tmp_path, data_dir, loss):
    from iqs.train import build

    cfg = compose_train(["debug=fdr", f"loss={loss}"], tmp_path / "run", data_dir)
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())["metrics"]
    assert "test/f1_macro" in metrics
    if loss == "weighted_cross_entropy":  # balanced weights come from the training split
        import pytorch_lightning as pl

        datamodule, model = build(cfg)
        trainer = pl.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False)
        trainer.fit(model, datamodule=datamodule)
        counts = datamodule.class_counts("train").float()
        expected = counts.sum() / (3 * counts.clamp(min=1))
        torch.testing.assert_close(model.loss.weight, expected)


def test_two_stage_finetuning_freezes_then_unfreezes(tmp_path, data_dir):
    import pytorch_lightning as pl

    from iqs.train import build

    seen, modes = [], []

    class Probe(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            # runs after the finetuning callback's own epoch-start hook (callback order)
            seen.append(
                (
                    all(not p.requires_grad for p in module.backbone.parameters()),
                    all(p.requires_grad for p in module.head.parameters()),
                    [g["lr"] for g in trainer.optimizers[0].param_groups],
                )
            )

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            # a frozen backbone's batch norm runs on its stored statistics (Keras' frozen base)
            bn = [m for m in module.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            modes.append({m.training for m in bn})

    cfg = compose_train(
        ["callbacks=two_stage", "callbacks.two_stage.unfreeze_at_epoch=1", "scheduler=none",
         "optimizer.lr=0.001", "callbacks.two_stage.backbone_lr_ratio=0.5", "logger=csv",
         "trainer.max_epochs=3", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1"],
        tmp_path / "run", data_dir,
    )  # fmt: skip
    datamodule, model = build(cfg)
    from hydra.utils import instantiate

    every_epoch = pl.callbacks.ModelCheckpoint(
        tmp_path / "ckpts", "epoch_{epoch:03d}", save_top_k=-1, auto_insert_metric_name=False
    )
    callbacks = [instantiate(cfg.callbacks.two_stage), Probe(), every_epoch]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    trainer.fit(model, datamodule=datamodule)
    assert seen[0] == (True, True, [0.001])
    frozen, head, lrs = seen[1]
    assert not frozen and head and lrs == [1e-5, 5e-6]  # head group, then the backbone group
    assert seen[2][2] == [1e-5, 5e-6]
    assert modes == [{False}] * 2 + [{True}] * 4  # 2 batches per epoch; stage 2 from epoch 1

    # resumed in stage 2 (from the end of epoch 1): the backbone stays trainable
    seen.clear()
    trainer = instantiate(cfg.trainer, callbacks=[instantiate(cfg.callbacks.two_stage), Probe()],
                          logger=False, max_epochs=4)  # fmt: skip
    _, resumed = build(cfg)
    trainer.fit(
        resumed,
        datamodule=datamodule,
        ckpt_path=str(tmp_path / "ckpts" / "epoch_001.ckpt"),
        weights_only=True,
    )
    assert [s[0] for s in seen] == [False, False] and seen[0][2] == [1e-5, 5e-6]


@pytest.mark.parametrize(
    "options",
    [
        ["scheduler=plateau"],
        ["scheduler=warmup_cosine"],
        ["model.channels_last=true", "trainer.accumulate_grad_batches=2",
         "trainer.precision=bf16-mixed"],
    ],
    ids=["plateau", "warmup_cosine", "channels_last+accumulate+bf16"],
)  # fmt: skip
def test_optimisation_and_speed_options_train(tmp_path, data_dir, options):
    cfg = compose_train(
        ["trainer.max_epochs=2", "logger=csv", *options], tmp_path / "run", data_dir
    )
    train(cfg)
    lrs = pd.read_csv(tmp_path / "run" / "csv" / "metrics.csv").filter(like="lr").dropna(how="all")
    assert len(lrs) >= 2  # the learning rate was logged every epoch


def test_schedulers_follow_their_definition():
    from iqs.models.schedulers import warmup_cosine

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_epochs=2, max_epochs=6, start_factor=0.1)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[1] == pytest.approx(0.55)
    assert lrs[2] == pytest.approx(1.0) and lrs[2] > lrs[3] > lrs[4] > lrs[5] > 0


def test_plateau_scheduler_watches_the_optimized_metric(tmp_path, data_dir):
    from iqs.models.module import build_model

    overrides = ["scheduler=plateau", "optimized_metric=val/f1_macro"]
    model = build_model(compose_train(overrides, tmp_path, data_dir), ["synthetic"])
    config = model.configure_optimizers()
    assert config["lr_scheduler"]["monitor"] == "val/f1_macro"
    assert config["lr_scheduler"]["scheduler"].mode == "max"


def test_compile_option_compiles_the_backbone_in_place(tmp_path, data_dir):
    """Wiring only: a compiled fast_dev_run takes minutes on CPU (checked by hand: it runs)."""
    from iqs.models.module import build_model

    model = build_model(compose_train(["model.compile=true"], tmp_path, data_dir), ["synthetic"])
    keys = set(model.state_dict())
    assert model.backbone._compiled_call_impl is None
    model.configure_model()
    assert model.backbone._compiled_call_impl is not None
    assert set(model.state_dict()) == keys  # checkpoints keep their keys


def test_optimized_mode_follows_the_metric_and_the_search_direction(tmp_path, data_dir):
    from iqs.train import check_optimized_mode

    run = tmp_path / "run"
    with pytest.raises(ValueError, match="val/loss is lower-is-better: add optimized_mode=min"):
        check_optimized_mode(compose_train(["optimized_metric=val/loss"], run, data_dir))
    cfg = compose_train(["optimized_metric=val/loss", "optimized_mode=min"], run, data_dir)
    check_optimized_mode(cfg)
    assert cfg.callbacks.model_checkpoint.mode == "min"  # the best checkpoint is the lowest loss
    search = ["hparams_search=optuna", "optimized_metric=val/loss", "optimized_mode=min"]
    with pytest.raises(ValueError, match="direction=maximize but optimized_mode=min"):
        check_optimized_mode(compose_train(search, run, data_dir))
    check_optimized_mode(
        compose_train([*search, "hydra.sweeper.direction=minimize"], run, data_dir)
    )
