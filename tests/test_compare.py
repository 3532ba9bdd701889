"""`iqs-compare`: ranking, tables and the offline HTML report, on run folders made here."""

from __future__ import annotations

import glob
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from iqs.compare import compare, load_run, main, parse_overrides
from tests.conftest import run_cli

IMG = '<img src="data:image/png;base64,'
VALUE_ERROR = "ValueError: batch_size should be a positive integer value, but got batch_size=-1"


def write_hydra(run: Path, overrides: list[str], **config: object) -> None:
    """.hydra/ as Hydra writes it: the composed config (interpolations unresolved)."""
    cfg = {
        "task_name": "train",
        "seed": 42,
        "optimized_metric": "val/srcc",
        "model": {"backbone": {"name": "mobilenetv3_small_100"}},
        "loss": {"_target_": "iqs.models.losses.CrossEntropy"},
        "callbacks": {"model_checkpoint": {"monitor": "${optimized_metric}", "mode": "max"}},
        "paths": {"output_dir": "${hydra:runtime.output_dir}"},
        **config,
    }
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg), run / ".hydra" / "config.yaml")
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: MULTIRUN\n")


def write_metrics(run: Path, srcc: list[float], f1: list[float], test: float = 0.4) -> None:
    """csv/metrics.csv as CSVLogger writes it: one metric group per row, NaN elsewhere."""
    rows, step = [], 0
    for epoch, (s, f) in enumerate(zip(srcc, f1)):
        rows.append({"lr-Adam": 1e-3, "step": step})
        for _ in range(2):
            step += 5
            rows.append({"epoch": epoch, "step": step, "train/loss_step": 1.1 - 0.1 * epoch})
        rows.append({
            "epoch": epoch, "step": step, "val/srcc": s, "val/f1_macro": f, "val/acc": f,
            "val/plcc": s, "val/loss": 1.0 - s / 2, "val/synthetic/srcc": s,
            "val/koniq10k/srcc": s - 0.1, "val/srcc_pooled": s,
            "val/srcc_best": max(srcc[: epoch + 1]),
        })  # fmt: skip
        rows.append({"epoch": epoch, "step": step, "train/loss_epoch": 1.0 - 0.1 * epoch})
    rows.append({"epoch": len(srcc), "step": step + 1, "test/srcc": test, "test/f1_macro": test})
    (run / "csv").mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows)
    frame[sorted(frame.columns)].to_csv(run / "csv" / "metrics.csv", index=False)


def write_results(run: Path, srcc: float, f1: float) -> None:
    results = {
        "checkpoint": str(run / "checkpoints" / "epoch_001.ckpt"),
        "metrics": {
            "test/srcc": srcc, "test/f1_macro": f1, "test/synthetic/srcc": srcc,
            "test/koniq10k/srcc": srcc - 0.1,
        },
        "confusion_matrix": [[5, 2, 1], [2, 6, 2], [0, 3, 9]],
    }  # fmt: skip
    (run / "test_metrics.json").write_text(json.dumps(results))


def write_status(run: Path, status: str, wall: float, error: str | None = None) -> None:
    record = {"status": status, "started": 1.7e9, "wall_time_s": wall}
    if error:
        record["error"] = error
    else:
        record.update(optimized_metric="val/srcc", value=0.5)
    (run / "status.json").write_text(json.dumps(record))


# (model, lr, val/srcc per epoch, val/f1_macro per epoch): best val/srcc ranks 1, 2, 0;
# best val/f1_macro ranks 0, 2, 1.
JOBS = [
    ("mobilenetv3_small_100", "0.001", [0.30, 0.50, 0.45], [0.40, 0.70, 0.65]),
    ("resnet18", "0.001", [0.40, 0.60, 0.62], [0.45, 0.50, 0.48]),
    ("mobilenetv3_small_100", "0.01", [0.20, 0.55, 0.30], [0.50, 0.60, 0.55]),
]


@pytest.fixture
def multirun(tmp_path: Path) -> Path:
    """A 4-job sweep over model x lr; job 3 failed before its first epoch."""
    sweep = tmp_path / "train" / "multiruns" / "2026-11-26_10-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    for num, (model, lr, srcc, f1) in enumerate([*JOBS, ("resnet18", "0.01", [], [])]):
        job = sweep / str(num)
        write_hydra(
            job,
            # logger=csv is the same everywhere and paths/hydra keys name no choice: all dropped.
            [f"model={model}", f"optimizer.lr={lr}", "logger=csv",
             f"paths.log_dir=/tmp/logs{num}", f"hydra.job.num={num}"],
        )  # fmt: skip
        if srcc:
            write_metrics(job, srcc, f1)
            write_results(job, srcc=max(srcc) - 0.05, f1=max(f1) - 0.05)
            write_status(job, "completed", wall=60.0 * (num + 1))
        else:
            write_status(job, "failed", wall=2.0, error=VALUE_ERROR)
            (job / "train.log").write_text("[2026-11-26 10:00:01,000][iqs.data][INFO] - data\n")
    return sweep


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"run": str})


def markdown_runs(path: Path) -> list[str]:
    """The run column of compare.md, in its order."""
    lines = path.read_text().splitlines()[2:]
    return [line.split("|")[2].strip() for line in lines if line.startswith("|")]


def test_multirun_table_report_and_terminal(multirun, capsys):
    assert main([str(multirun)]) == 0  # the output goes beside the jobs of a single sweep

    table = read_csv(multirun / "compare.csv")
    assert table["run"].tolist() == ["1", "2", "0", "3"]
    assert table["rank"].tolist()[:3] == [1, 2, 3] and math.isnan(table["rank"].iloc[3])
    assert table["best val/srcc"].tolist()[:3] == pytest.approx([0.62, 0.55, 0.50])
    assert table["best epoch"].tolist()[:3] == [2, 1, 1]
    assert table["final val/srcc"].tolist()[:3] == pytest.approx([0.62, 0.30, 0.45])
    assert table["best val/f1_macro"].tolist()[:3] == pytest.approx([0.50, 0.60, 0.70])
    assert table["test/srcc"].tolist()[:3] == pytest.approx([0.57, 0.50, 0.45])
    assert table["epochs"].tolist()[:3] == [3, 3, 3]
    assert table["wall_time_s"].tolist() == pytest.approx([120.0, 180.0, 60.0, 2.0])
    standard = {"rank", "run", "status", "best epoch", "epochs", "wall_time_s", "error"}
    varying = [c for c in table.columns if c not in standard and "/" not in c]
    assert varying == ["model", "optimizer.lr"]  # logger, paths.*, hydra.* dropped
    failed = table.iloc[3]
    assert failed["status"] == "failed" and failed["error"] == VALUE_ERROR
    assert table["status"].tolist()[:3] == ["completed"] * 3

    md = multirun / "compare.md"
    assert markdown_runs(md) == ["1", "2", "0", "3"]
    text = md.read_text()
    assert "ValueError: batch_size should be a positive" in text
    assert "| 0.6200 |" in text and "n/a" in text and "| 2m00s |" in text

    printed = capsys.readouterr().out
    assert "optimizer.lr" in printed and "ValueError" in printed and "1 failed: 3" in printed

    report = (multirun / "report.html").read_text()
    assert report.count(IMG) == 4  # curves, bars, confusion matrix, SRCC per source
    for remote in ("http://", "https://", 'src="//', "<script", "<link"):
        assert remote not in report
    assert "ValueError: batch_size should be a positive" in report
    assert "<td>resnet18</td>" in report


def test_other_metric_reranks(multirun, tmp_path):
    out = tmp_path / "by_f1"
    assert main([str(multirun), "--metric", "val/f1_macro", "--out", str(out)]) == 0
    table = read_csv(out / "compare.csv")
    assert table["run"].tolist() == ["0", "2", "1", "3"]
    assert table["best val/srcc"].tolist()[:3] == pytest.approx([0.50, 0.55, 0.62])
    assert not (multirun / "compare.csv").exists()

    table, _ = compare([multirun], tmp_path / "by_loss", metric="val/loss")  # lower is better
    assert table["run"].tolist() == ["1", "2", "0", "3"]


def test_damaged_and_old_runs_do_not_stop_the_report(tmp_path, capsys):
    root = tmp_path / "runs"
    write_hydra(root / "good", ["seed=1"])
    write_metrics(root / "good", [0.3, 0.4], [0.5, 0.6])
    write_results(root / "good", 0.35, 0.55)
    # No status.json (runs before it existed), empty metrics.csv, corrupt test_metrics.json.
    write_hydra(root / "empty_csv", ["seed=2"])
    (root / "empty_csv" / "csv").mkdir()
    (root / "empty_csv" / "csv" / "metrics.csv").write_text("")
    (root / "empty_csv" / "test_metrics.json").write_text('{"metrics": {"test/srcc": 0.2')
    # Metric columns missing, the rest NaN; old run that logged its error.
    write_hydra(root / "nan" / "deep", ["seed=3"])
    (root / "nan" / "deep" / "csv").mkdir()
    (root / "nan" / "deep" / "csv" / "metrics.csv").write_text(
        "epoch,step,val/acc\n0,5,\n1,9,nan\n"
    )
    (root / "nan" / "deep" / "train.log").write_text(
        "[2026-01-01 10:00:00,000][iqs.train][INFO] - start\n"
        "[2026-01-01 10:00:09,000][iqs.train][ERROR] - koniq10k: images missing in /data\n"
    )
    write_hydra(root / "bad_status", ["seed=4"])
    write_results(root / "bad_status", 0.1, 0.1)
    (root / "bad_status" / "status.json").write_text("not json")

    assert main([str(root), "--out", str(tmp_path / "out")]) == 0
    table = read_csv(tmp_path / "out" / "compare.csv")
    assert table["run"].tolist() == ["good", "bad_status", "empty_csv", "nan/deep"]
    assert table["status"].tolist() == ["completed", "completed", "failed", "failed"]
    assert table["error"].iloc[3] == "koniq10k: images missing in /data"
    assert table["error"].iloc[2] == "no test results and no error logged"
    assert table["best val/srcc"].isna().tolist() == [False, True, True, True]
    report = (tmp_path / "out" / "report.html").read_text()
    assert report.count(IMG) == 4
    for note in ("test_metrics.json: unreadable", "status.json: unreadable", "csv/metrics.csv"):
        assert note in report
    assert "n/a" in capsys.readouterr().out


def test_single_run_without_plots_data(tmp_path):
    run = tmp_path / "run"
    write_hydra(run, ["model=resnet18"])
    write_status(run, "completed", wall=3725.0)
    table, out = compare([run], tmp_path / "out")
    assert out == tmp_path / "out" and len(table) == 1
    assert "model" not in table.columns  # nothing to compare it with: nothing differs
    md = (out / "compare.md").read_text()
    assert "1h02m" in md
    report = (out / "report.html").read_text()
    assert IMG not in report
    assert "has no confusion matrix" in report


def test_no_run_found_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), str(tmp_path / "missing")]) == 2
    assert "no run directory" in capsys.readouterr().err


def test_parse_overrides():
    assert parse_overrides(
        ["model=resnet18", "+trainer.max_epochs=5", "++seed=1", "~callbacks.early_stopping",
         "paths.log_dir=/x", "hydra.job.chdir=true", "tags=[a,b]", "broken"]
    ) == {
        "model": "resnet18", "trainer.max_epochs": "5", "seed": "1",
        "callbacks.early_stopping": "(deleted)", "tags": "[a,b]",
    }  # fmt: skip
    assert parse_overrides(None) == {}


def test_running_job_wall_time_from_files(tmp_path):
    run = tmp_path / "run"
    write_hydra(run, [])
    write_metrics(run, [0.3], [0.4])
    status = {"status": "running", "started": (run / ".hydra" / "config.yaml").stat().st_mtime - 50}
    (run / "status.json").write_text(json.dumps(status))
    loaded = load_run(run)
    assert loaded.status == "running" and loaded.wall_time_s >= 50


@pytest.mark.slow
def test_real_multirun_with_a_failing_job(tmp_path, data_dir):
    # A negative learning rate makes Adam raise in job 1. (Not data.batch_size=8,-1: the tiny
    # settings run_cli appends set data.batch_size=8 after it, which leaves a single job.)
    log_dir = tmp_path / "logs"
    proc = run_cli(
        ["-m", "optimizer.lr=0.001,-1", "debug=fdr", "logger=csv"], log_dir, data_dir, check=False
    )
    assert proc.returncode != 0  # Hydra's basic launcher runs every job, then raises
    (sweep,) = glob.glob(str(log_dir / "debug" / "multiruns" / "*"))
    sweep = Path(sweep)
    assert (sweep / "0" / "test_metrics.json").is_file()
    assert not (sweep / "1" / "test_metrics.json").exists()

    assert main([str(sweep)]) == 0
    table = read_csv(sweep / "compare.csv")
    assert table["run"].tolist() == ["0", "1"]
    assert table["status"].tolist() == ["completed", "failed"]
    assert "ValueError" in table["error"].iloc[1]
    assert "Invalid learning rate" in table["error"].iloc[1]
    assert table.columns[3] == "optimizer.lr"
    report = (sweep / "report.html").read_text()
    assert "Invalid learning rate" in report and IMG in report  # job 0's confusion matrix


def test_resumed_sessions_header_only_csv_and_the_tested_epoch(tmp_path):
    runs = tmp_path / "runs"
    write_hydra(runs / "resumed", ["seed=1"])
    (runs / "resumed" / "csv").mkdir()
    # the session before the resume (iqs-train moved its file aside), then the resumed one,
    # which repeats epoch 1
    (runs / "resumed" / "csv" / "metrics.1.csv").write_text(
        "epoch,step,val/srcc\n0,5,0.9\n1,9,0.5\n"
    )
    (runs / "resumed" / "csv" / "metrics.csv").write_text(
        "epoch,step,val/srcc\n1,9,0.55\n2,13,0.6\n"
    )
    (runs / "resumed" / "test_metrics.json").write_text(json.dumps(
        {"checkpoint": "/x/checkpoints/epoch_000.ckpt", "metrics": {"test/srcc": 0.8}}
    ))  # fmt: skip
    # killed before its first epoch ended: a header and no row
    write_hydra(runs / "killed", ["seed=2"])
    (runs / "killed" / "csv").mkdir()
    (runs / "killed" / "csv" / "metrics.csv").write_text("epoch,step,val/srcc\n")

    assert main([str(runs), "--out", str(tmp_path / "out")]) == 0
    row = read_csv(tmp_path / "out" / "compare.csv").set_index("run").loc["resumed"]
    assert (row["best val/srcc"], row["best epoch"]) == (0.9, 0)
    assert (row["final val/srcc"], row["epochs"]) == (0.6, 3)

    assert main([str(runs), "--metric", "test/srcc", "--out", str(tmp_path / "by_test")]) == 0
    row = read_csv(tmp_path / "by_test" / "compare.csv").set_index("run").loc["resumed"]
    assert (row["best test/srcc"], row["best epoch"]) == (0.8, 0)  # the checkpoint tested


def test_a_running_job_whose_process_is_gone_is_failed(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    for name, pid, host in (("killed", int(gone.stdout), socket.gethostname()),
                            ("alive", os.getpid(), socket.gethostname()),
                            ("elsewhere", int(gone.stdout), "another-machine")):  # fmt: skip
        write_hydra(tmp_path / name, ["seed=1"])
        (tmp_path / name / "status.json").write_text(json.dumps(
            {"status": "running", "started": 1.7e9, "wall_time_s": 1.0, "pid": pid, "host": host}
        ))  # fmt: skip
    runs = {name: load_run(tmp_path / name) for name in ("killed", "alive", "elsewhere")}
    assert runs["killed"].status == "failed" and "ended without recording" in runs["killed"].error
    assert runs["alive"].status == runs["elsewhere"].status == "running"
