"""`iqs-data` and training on the real data sets' layouts (tiny trees), bad input included."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from iqs.data_cli import main as iqs_data
from iqs.train import train
from tests.conftest import TINY_RUN, compose_train


def roots(trees: Path, names=("koniq10k", "spaq", "ava", "eva")) -> list[str]:
    return [f"data.sources.{n}.root={trees / n}" for n in names]


@pytest.fixture
def damaged(trees: Path, tmp_path: Path) -> Path:
    """A copy of the SPAQ and AVA trees with the usual accidents of a real download."""
    for name in ("spaq", "ava"):
        shutil.copytree(trees / name, tmp_path / name)
    images = tmp_path / "spaq" / "TestImage"
    (images / "00002.jpg").write_bytes(b"")  # zero bytes
    data = (images / "00003.jpg").read_bytes()
    (images / "00003.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (images / "00004.jpg").unlink()  # missing
    shutil.copy(images / "00005.jpg", images / "00006.jpg")  # the same photo twice
    csv = tmp_path / "spaq" / "SPAQ_annotations.csv"
    lines = csv.read_bytes().splitlines(keepends=True)
    lines[8] = b"00008.jpg,,1,2,3,4,5\r\n"  # missing score on line 9
    lines[9] = b"00009.jpg,abc,1,2,3,4,5\r\n"  # not a number on line 10
    csv.write_bytes(b"".join(lines))
    return tmp_path


def test_check_reports_each_problem_with_its_file_and_line(damaged, capsys):
    status = iqs_data(["check", "data=technical", *roots(damaged, ["spaq"]),
                       "data.sources.koniq10k.enabled=false"])  # fmt: skip
    out = capsys.readouterr().out
    csv = damaged / "spaq" / "SPAQ_annotations.csv"
    assert status == 1
    assert f"{csv}:9: MOS is missing" in out
    assert f"{csv}:10: MOS is 'abc', not a number" in out
    assert "1 of 22 images missing" in out and "00004.jpg" in out
    assert "2 unreadable" in out
    assert "00002.jpg: empty file" in out or "00002.jpg" in out
    assert "00003.jpg" in out and "truncated" in out
    assert "00005.jpg" in out and "00006.jpg" in out  # duplicates
    assert "problem(s) found" in out


def test_check_of_a_missing_data_set_says_where_to_get_it(tmp_path, capsys):
    status = iqs_data(["check", "data=koniq10k", f"paths.data_dir={tmp_path}"])
    out = capsys.readouterr().out
    assert status == 1
    assert f"data set not found at {tmp_path / 'koniq10k'}" in out and "Download it from" in out


@pytest.mark.slow
def test_training_on_a_missing_data_set_stops_with_one_clear_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "iqs.train", "data=koniq10k", "logger=csv",
         f"paths.data_dir={tmp_path}", f"paths.log_dir={tmp_path / 'logs'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert f"data set not found at {tmp_path / 'koniq10k'}" in out and "Download it from" in out
    assert "Traceback" not in out


def test_summary_counts_rows_per_source_split_and_class(trees, capsys):
    assert iqs_data(["summary", "data=combined", *roots(trees)]) == 0
    out = capsys.readouterr().out
    for name in ("koniq10k", "spaq", "ava", "eva", "rejected", "pending", "accepted", "total"):
        assert name in out


def test_runs_from_a_folder_whose_name_holds_a_comma(trees, tmp_path, monkeypatch, capsys):
    odd = tmp_path / "photos, 2026=best"
    odd.mkdir()
    monkeypatch.chdir(odd)  # the run's folder was an unquoted override value
    monkeypatch.delenv("IQS_ROOT", raising=False)
    assert iqs_data(["summary", "data=koniq10k", *roots(trees, ["koniq10k"])]) == 0
    assert "koniq10k" in capsys.readouterr().out


def test_cache_builds_once_then_reuses(trees, tmp_path, capsys):
    args = ["cache", "data=koniq10k", "data/labels=definition", *roots(trees, ["koniq10k"]),
            f"data.cache.dir={tmp_path}"]  # fmt: skip
    assert iqs_data(args) == 0
    assert "24 built, 0 reused, 0 failed" in capsys.readouterr().out
    assert len(list((tmp_path / "koniq10k" / "512px").glob("*.jpg"))) == 24
    assert iqs_data(args) == 0
    assert "0 built, 24 reused" in capsys.readouterr().out


def test_cache_exits_1_when_images_were_left_out_while_reading(trees, tmp_path, capsys):
    """A missing photo never reaches the cache's list: the exit status must still say so."""
    shutil.copytree(trees / "spaq", tmp_path / "spaq")
    (tmp_path / "spaq" / "TestImage" / "00004.jpg").unlink()
    args = ["cache", "data=spaq", "data/labels=definition", *roots(tmp_path, ["spaq"]),
            f"data.cache.dir={tmp_path / 'cache'}"]  # fmt: skip
    assert iqs_data(args) == 1
    out = capsys.readouterr().out
    assert "0 failed" in out and "1 problem(s) while reading; run `iqs-data check`" in out


def test_bad_override_is_a_usage_error(capsys):
    assert iqs_data(["summary", "data=nope"]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.slow
def test_one_step_on_the_combined_mix(trees, damaged, tmp_path, data_dir):
    """The study's mix from the four layouts (SPAQ damaged): one batch per split holds every
    row, so the run must skip SPAQ's two unreadable photos, count them, and still finish."""
    overrides = [
        "data=combined", "data/labels=definition", "logger=csv", "trainer.max_epochs=1",
        "data.batch_size=256", "data.eval_batch_size=256",
        *roots(trees, ["koniq10k", "ava", "eva"]), *roots(damaged, ["spaq"]),
        f"data.cache.dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    cfg = compose_train(overrides, tmp_path / "run", data_dir, tiny=TINY_RUN)
    train(cfg)
    manifest = pd.read_csv(tmp_path / "run" / "manifest.csv", keep_default_na=False)
    assert set(manifest["source"]) == {"koniq10k", "spaq", "ava", "eva"}
    assert manifest.groupby("image_id")["split"].nunique().max() == 1
    assert not manifest["path"].str.endswith("00004.jpg").any()  # missing: left out
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())["metrics"]
    assert {"test/koniq10k/f1_macro", "test/eva/srcc", "test/spaq/f1_rejected"} <= set(metrics)
    logged = pd.read_csv(tmp_path / "run" / "csv" / "metrics.csv")
    skipped = (
        sum(logged[f"{s}/skipped_images"].sum() for s in ("train", "val"))
        + metrics["test/skipped_images"]
    )
    assert skipped == 2  # 00002.jpg (empty) and 00003.jpg (truncated)
    assert len(list((tmp_path / "cache" / "koniq10k" / "512px").glob("*.jpg"))) == 24


@pytest.mark.slow
def test_study_experiment_runs_a_fast_dev_run_on_cpu(trees, tmp_path, data_dir):
    """The study's preset on its four data sets (tiny trees); no network: pretrained=false."""
    overrides = [
        "experiment=study_inceptionv3", "debug=fdr", "model.backbone.pretrained=false",
        "data.batch_size=4", "data.eval_batch_size=4", f"data.cache.dir={tmp_path / 'cache'}",
        *roots(trees),
    ]  # fmt: skip
    cfg = compose_train(overrides, tmp_path / "run", data_dir, tiny=["data.num_workers=0"])
    assert cfg.model.backbone.name == "inception_v3" and cfg.data.train_crop_from == 320
    assert cfg.callbacks.two_stage.unfreeze_at_epoch == 3 and cfg.data.image_size == 299
    train(cfg)
    assert (tmp_path / "run" / "test_metrics.json").is_file()
