"""Interrupted runs, damaged or foreign checkpoints, divergence, full disks, read-only folders."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from iqs.callbacks import CheckpointSaveError, DivergenceError
from iqs.models.module import CheckpointError, IQSModule, read_checkpoint
from iqs.train import train
from tests.conftest import TINY, compose_train, run_cli

pytestmark = pytest.mark.slow

RUN = ["logger=csv", "trainer.max_epochs=3"]


def _cli(run_dir: Path, data_dir: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "iqs.train", *TINY, *RUN, f"paths.data_dir={data_dir}",
           f"hydra.run.dir={run_dir}", *args]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {path} appeared:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


def _test_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "test_metrics.json").read_text())["metrics"]


def test_killed_run_resumes_from_last_ckpt_to_the_same_metrics(tmp_path, data_dir):
    """SIGKILL after an epoch, resume in place: the same test metrics as an uninterrupted run."""
    whole = tmp_path / "whole"
    train(compose_train(RUN, whole, data_dir))

    killed = tmp_path / "killed"
    proc = _cli(killed, data_dir)
    _wait_for(killed / "checkpoints" / "epoch_001.ckpt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (killed / "test_metrics.json").exists()
    last = killed / "checkpoints" / "last.ckpt"
    resumed = _cli(killed, data_dir, f"ckpt_path={last}")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    want, got = _test_metrics(whole), _test_metrics(killed)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    # the epochs logged before the kill are kept (CSVLogger would overwrite its file), and
    # iqs-compare reads both sessions as one curve
    from iqs.compare import curve, load_run

    assert (killed / "csv" / "metrics.1.csv").is_file()
    full, merged = (curve(load_run(run).metrics, "val/srcc") for run in (whole, killed))
    assert merged.index.tolist() == full.index.tolist() == list(range(len(full)))
    assert merged.to_numpy() == pytest.approx(full.to_numpy(), abs=1e-6)


def test_sigterm_saves_a_checkpoint_and_the_run_resumes_from_it(tmp_path, data_dir):
    run = tmp_path / "run"
    proc = _cli(run, data_dir, "trainer.max_epochs=20")
    _wait_for(run / "checkpoints" / "epoch_000.ckpt", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    interrupted = run / "checkpoints" / "interrupted.ckpt"
    assert interrupted.is_file() and "received SIGTERM" in out
    epoch = read_checkpoint(interrupted)["epoch"]
    resumed = _cli(run, data_dir, f"ckpt_path={interrupted}", f"trainer.max_epochs={epoch + 2}")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    assert (run / "test_metrics.json").is_file()


def test_truncated_and_pickled_checkpoints_are_refused_clearly(tmp_path, data_dir):
    run = tmp_path / "run"
    train(compose_train(["logger=csv", "trainer.max_epochs=1"], run, data_dir))
    good = run / "checkpoints" / "last.ckpt"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_checkpoint(truncated)
    cfg = compose_train(["logger=csv", f"ckpt_path={truncated}"], tmp_path / "again", data_dir)
    with pytest.raises(CheckpointError, match=str(truncated)):
        train(cfg)
    # another model's checkpoint: one line naming what it was trained as, no traceback
    other = compose_train(["logger=csv", "model=resnet18", f"ckpt_path={good}"], tmp_path / "o",
                          data_dir)  # fmt: skip
    with pytest.raises(CheckpointError, match=r"trained as model\.backbone\.name=mobilenetv3"):
        train(other)

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    state = torch.load(good, weights_only=True)
    state["hparams"] = Payload()
    evil = tmp_path / "evil.ckpt"
    torch.save(state, evil)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(evil)


def test_nan_loss_stops_without_touching_the_last_good_checkpoint(tmp_path, data_dir, monkeypatch):
    run = tmp_path / "run"
    original = IQSModule.training_step

    def diverge(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.current_epoch == 1 and batch_idx == 2 else loss

    cfg = compose_train(["logger=csv", "trainer.max_epochs=3"], run, data_dir)
    monkeypatch.setattr(IQSModule, "training_step", diverge)
    with pytest.raises(DivergenceError, match=r"epoch 1, batch 2"):
        train(cfg)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["epoch_000.ckpt", "last.ckpt"]
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 0


def test_full_disk_during_a_checkpoint_save_stops_cleanly(tmp_path, data_dir, monkeypatch):
    import iqs.callbacks

    run = tmp_path / "run"
    saves = {"n": 0}
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] > 2:  # epoch_000 and last.ckpt go through; the next save fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(iqs.callbacks.torch, "save", save)
    with pytest.raises(CheckpointSaveError, match=r"epoch_001\.ckpt: No space left"):
        train(compose_train(["logger=csv", "trainer.max_epochs=3"], run, data_dir))
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert files == ["epoch_000.ckpt", "last.ckpt"]  # no half-written file under any name
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 0


def test_read_only_photo_folder_predicts_and_reports_unwritable_sidecars(
    tmp_path, data_dir, monkeypatch
):
    import iqs.xmp
    from iqs.predict import find_photos, predict, write_sidecars
    from tests.test_deploy import _photos

    run = tmp_path / "run"
    train(compose_train(["logger=csv", "+trainer.limit_train_batches=2"], run, data_dir))
    photos = _photos(tmp_path / "photos")

    def refuse(path, *args, **kwargs):  # what os.open does on a read-only folder (as non-root)
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(iqs.xmp.os, "open", refuse)
    rows = predict(find_photos([tmp_path / "photos"]), run / "checkpoints" / "last.ckpt")
    write_sidecars(rows, "default", dry_run=False)
    assert len(rows) == len(photos) and all(r["label"] for r in rows)
    assert all(r["xmp"].startswith("failed:") and "Permission denied" in r["xmp"] for r in rows)
    assert not list((tmp_path / "photos").rglob("*.xmp"))


def test_unwritable_output_folder_names_the_path(tmp_path, data_dir):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = run_cli(["debug=fdr", "logger=csv"], blocker / "logs", data_dir, check=False)
    assert proc.returncode != 0
    assert str(blocker / "logs") in proc.stdout + proc.stderr
