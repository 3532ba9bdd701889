"""`iqs-compare`: rank training runs from their local files and write a report (no network).

iqs-compare outputs/train/multiruns/2026-11-26_10-00-00     # a sweep: its numbered jobs
iqs-compare outputs/train/runs/A outputs/train/runs/B --out cmp
iqs-compare outputs/ --metric val/f1_macro --mode max       # every run found below a folder

Reads each run's .hydra/config.yaml and overrides.yaml, csv/metrics.csv (Lightning's CSVLogger),
test_metrics.json and status.json. Writes compare.md and compare.csv (one row per run: the
overrides that differ between runs, best and final metrics, epochs, wall time; ranked by the best
value of the metric, failed runs last with their error) and report.html, a single file with every
plot inline that opens without network. The table is printed too. Unreadable files never stop
the comparison: their values show as n/a and the report lists them.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import math
import os
import re
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure

from iqs.data.labels import CLASS_NAMES
from iqs.utils import atomic_write_text

log = logging.getLogger(__name__)

STATUSES = ("running", "completed", "failed", "interrupted")
# Override keys that name where files go, not what was trained: never a reason runs differ.
IGNORED_PREFIXES = ("hydra.", "paths.")
# Shown beside the ranking metric (when they are not it).
SECONDARY = ("val/srcc", "val/f1_macro")
TEST_COLUMNS = ("test/srcc", "test/f1_macro")
NA = "n/a"
_LOG_ERROR = re.compile(r"\]\[(?:ERROR|CRITICAL)\] - (.*)$")
_SOURCE_SRCC = re.compile(r"val/([^/]+)/srcc")


@dataclass
class Run:
    """What one run directory says about itself; parts that could not be read stay empty."""

    path: Path
    name: str = ""
    status: str = "unknown"
    error: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)
    test: dict[str, float] = field(default_factory=dict)
    confusion: np.ndarray | None = None
    wall_time_s: float | None = None
    test_epoch: int | None = None  # the epoch of the checkpoint tested, when its name says
    optimized_metric: str | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- finding runs


def _natural_key(path: Path) -> list[Any]:
    """Sort job 10 after job 9."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def is_run_dir(path: Path) -> bool:
    return (path / ".hydra" / "config.yaml").is_file()


def is_multirun_dir(path: Path) -> bool:
    return (path / "multirun.yaml").is_file()


def _walk_runs(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if is_run_dir(here):
            dirnames.clear()  # checkpoints, csv/, wandb/ below a run hold no other run
            yield here
        else:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Run directories in ``paths``: runs themselves, jobs of multiruns, or runs found below."""
    found: list[Path] = []
    for path in paths:
        if is_run_dir(path):
            found.append(path)
        elif is_multirun_dir(path):
            # Every numbered job, even one that died before Hydra wrote its .hydra/ folder.
            jobs = [p for p in path.iterdir() if p.is_dir() and p.name.isdigit()]
            found.extend(sorted(jobs, key=lambda p: int(p.name)))
        elif path.is_dir():
            found.extend(sorted(_walk_runs(path), key=_natural_key))
        else:
            log.warning("%s: not a folder, skipped", path)
    unique: dict[Path, None] = {}
    for path in found:
        unique.setdefault(path.resolve(), None)
    return list(unique)


# ---------------------------------------------------------------------------- reading a run


def parse_overrides(lines: Any) -> dict[str, str]:
    """Hydra's overrides.yaml (``["model=resnet18", "+x=1", "~y"]``) -> ``{key: value}``."""
    result: dict[str, str] = {}
    for line in lines if isinstance(lines, list) else []:
        text = str(line).strip()
        key, sep, value = text.partition("=")
        if key.startswith("~"):
            key, value = key[1:], "(deleted)"
        elif not sep:
            continue
        key = key.lstrip("+")
        if key in ("hydra", "paths") or key.startswith(IGNORED_PREFIXES):
            continue
        result[key] = value
    return result


def _read_json(path: Path, run: Run) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        run.notes.append(f"{path.name}: unreadable ({type(e).__name__}: {e})")
        return None
    if not isinstance(data, dict):
        run.notes.append(f"{path.name}: not a JSON object")
        return None
    return data


def _read_yaml(path: Path, run: Run) -> Any:
    if not path.is_file():
        run.notes.append(f".hydra/{path.name}: missing")
        return None
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        run.notes.append(f".hydra/{path.name}: unreadable ({type(e).__name__})")
        return None


def _read_metrics(folder: Path, run: Run) -> pd.DataFrame:
    """``metrics.csv``, after the ``metrics.<n>.csv`` of the sessions before each resume."""
    earlier = sorted((p for p in folder.glob("metrics.*.csv") if p.suffixes[0][1:].isdigit()),
                     key=lambda p: int(p.suffixes[0][1:]))  # fmt: skip
    paths = [*earlier, folder / "metrics.csv"]
    if not paths[-1].is_file() and not earlier:
        run.notes.append("csv/metrics.csv: missing (no curves)")
        return pd.DataFrame()
    frames = []
    for path in paths:
        try:
            frames.append(pd.read_csv(path))
        except FileNotFoundError:
            run.notes.append(f"csv/{path.name}: missing")
        except (OSError, UnicodeDecodeError, pd.errors.EmptyDataError, pd.errors.ParserError) as e:
            run.notes.append(f"csv/{path.name}: unreadable ({type(e).__name__})")
    if not frames:
        return pd.DataFrame()
    frame = pd.concat(frames, ignore_index=True)
    # A half-written last line or a stray string must not turn a whole column into text, and a
    # file of only a header (a run killed early) must still give number columns.
    return frame.apply(pd.to_numeric, errors="coerce").astype(float)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _confusion(value: Any) -> np.ndarray | None:
    try:
        matrix = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.size == 0:
        return None
    return matrix


def _last_log_error(path: Path) -> str | None:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        match = _LOG_ERROR.search(line)
        if match:
            return match.group(1).strip()
    return None


def _mtime_span(path: Path) -> tuple[float | None, float | None]:
    """First and last modification times of the run's files (start: Hydra's config files)."""
    starts = [p.stat().st_mtime for p in (path / ".hydra").glob("*.yaml")]
    names = ["train.log", "csv/metrics.csv", "test_metrics.json", "status.json"]
    ends = [(path / n).stat().st_mtime for n in names if (path / n).is_file()]
    ends += [p.stat().st_mtime for p in (path / "checkpoints").glob("*.ckpt")]
    if not starts and not ends:
        return None, None
    return min(starts or ends), max(starts + ends)


def load_run(path: Path, name: str | None = None) -> Run:
    """Everything `iqs-compare` needs from one run directory; never raises on bad files."""
    run = Run(path=path, name=name or path.name)
    config = _read_yaml(path / ".hydra" / "config.yaml", run)
    run.config = config if isinstance(config, dict) else {}
    run.overrides = parse_overrides(_read_yaml(path / ".hydra" / "overrides.yaml", run))
    run.metrics = _read_metrics(path / "csv", run)

    results = _read_json(path / "test_metrics.json", run)
    if results is not None:
        metrics = results.get("metrics")
        if isinstance(metrics, dict):
            run.test = {str(k): _float(v) for k, v in metrics.items()}
        tested = re.search(r"epoch_(\d+)\.ckpt$", str(results.get("checkpoint") or ""))
        run.test_epoch = int(tested.group(1)) if tested else None
        run.confusion = _confusion(results.get("confusion_matrix"))
    # Corrupt or absent JSON: the test row that CSVLogger wrote still has the values.
    for col in run.metrics.columns:
        if col.startswith("test/") and col not in run.test:
            values = run.metrics[col].dropna()
            if len(values):
                run.test[col] = float(values.iloc[-1])

    started, last_write = _mtime_span(path)
    status = _read_json(path / "status.json", run)
    if status is not None and status.get("status") in STATUSES:
        run.status = status["status"]
        run.error = str(status["error"]) if status.get("error") else None
        run.wall_time_s = _float(status.get("wall_time_s"))
        started = _float(status.get("started", started))
        if isinstance(status.get("optimized_metric"), str):
            run.optimized_metric = status["optimized_metric"]
        if run.status == "running" and _ended(status):
            run.status = "failed"
            run.error = (f"its process ({status['pid']}) ended without recording a result "
                         "(killed, out of memory?)")  # fmt: skip
    else:
        if status is not None:
            run.notes.append("status.json: no known status")
        # Runs from before status.json existed: the files tell how far they got.
        if results is not None or (run.config.get("test") is False and not run.metrics.empty):
            run.status = "completed"
        else:
            run.status = "failed"
    if run.status == "failed" and not run.error:
        run.error = _last_log_error(path / "train.log") or "no test results and no error logged"
    # status.json of a running job was written at its start: the files written since tell
    # how long it has gone on. Older runs have only their files' times.
    known = run.wall_time_s is not None and math.isfinite(run.wall_time_s)
    times = started is not None and last_write is not None and math.isfinite(started)
    if (run.status == "running" or not known) and times:
        run.wall_time_s = max(last_write - started, run.wall_time_s if known else 0.0)
    if run.status == "completed" and results is None and run.config.get("test", True):
        run.notes.append("test_metrics.json: missing (no test results)")
    if run.optimized_metric is None and isinstance(run.config.get("optimized_metric"), str):
        run.optimized_metric = run.config["optimized_metric"]
    return run


def _ended(status: dict[str, Any]) -> bool:
    """A "running" job whose process is gone (SIGKILL, out of memory): decidable only on the
    machine it ran on."""
    pid = status.get("pid")
    if status.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # someone else's process: alive
        return False
    return False


def _names(paths: Sequence[Path]) -> list[str]:
    """Each run's directory relative to what the runs have in common (a sweep: 0, 1, ...)."""
    if len(paths) == 1:
        return [paths[0].name]
    common = Path(os.path.commonpath([str(p) for p in paths]))
    return [str(p.relative_to(common)) for p in paths]


def load_runs(paths: Sequence[Path]) -> list[Run]:
    return [load_run(p, n) for p, n in zip(paths, _names(paths))]


# ---------------------------------------------------------------------------- the table


def curve(metrics: pd.DataFrame, name: str) -> pd.Series:
    """The finite values of one metric, indexed by epoch (the last value when one repeats)."""
    if name not in metrics.columns:
        return pd.Series(dtype=float)
    values = metrics[name]
    keep = values.notna() & np.isfinite(values)
    if "epoch" in metrics.columns:
        epochs = metrics["epoch"]
        keep &= epochs.notna()
        series = pd.Series(values[keep].to_numpy(), index=epochs[keep].astype(int).to_numpy())
    else:
        series = pd.Series(values[keep].to_numpy(), index=np.arange(int(keep.sum())))
    return series[~series.index.duplicated(keep="last")]


def _best(series: pd.Series, mode: str) -> tuple[float, int | None, float]:
    """Best value, its epoch, final value. The first epoch to reach the best wins, as in
    ModelCheckpoint, which replaces its best only on a strict improvement."""
    if series.empty:
        return math.nan, None, math.nan
    pos = int(series.to_numpy().argmax() if mode == "max" else series.to_numpy().argmin())
    return float(series.iloc[pos]), int(series.index[pos]), float(series.iloc[-1])


def _epochs(metrics: pd.DataFrame) -> int | None:
    if "epoch" not in metrics.columns:
        return None
    cols = [c for c in metrics.columns if c.startswith(("train/", "val/"))]
    # Test rows carry epoch = max_epochs: counting them would add an epoch never trained.
    rows = metrics[cols].notna().any(axis=1) if cols else metrics["epoch"].notna()
    epochs = metrics.loc[rows, "epoch"].dropna()
    return int(epochs.max()) + 1 if len(epochs) else None


def source_srcc(run: Run) -> dict[str, float]:
    """Best validation SRCC of each source (``val/<source>/srcc``)."""
    result = {}
    for col in run.metrics.columns:
        match = _SOURCE_SRCC.fullmatch(col)
        if match:
            values = curve(run.metrics, col)
            result[match.group(1)] = float(values.max()) if len(values) else math.nan
    return result


def differing_overrides(runs: Sequence[Run]) -> list[str]:
    """Override keys whose value is not the same in every run, in order of first appearance."""
    keys = list(dict.fromkeys(k for r in runs for k in r.overrides))
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


def default_mode(runs: Sequence[Run], metric: str) -> str:
    """The run's ``optimized_mode`` (or, in runs before it existed, its checkpoint callback's
    mode) when ``metric`` is what it optimised; else by the name."""
    for run in runs:
        ckpt = (run.config.get("callbacks") or {}).get("model_checkpoint") or {}
        mode = run.config.get("optimized_mode", ckpt.get("mode"))
        if run.optimized_metric == metric and mode in ("min", "max"):
            return str(mode)
    return "min" if "loss" in metric.rsplit("/", 1)[-1] else "max"


def default_metric(runs: Sequence[Run]) -> str:
    names = Counter(r.optimized_metric for r in runs if r.optimized_metric)
    metric = names.most_common(1)[0][0] if names else "val/srcc"
    if len(names) > 1:
        log.warning("runs optimise different metrics %s: comparing by %s", dict(names), metric)
    return metric


def build_table(runs: Sequence[Run], metric: str, mode: str) -> pd.DataFrame:
    """One row per run, best first; failed runs and runs without the metric last."""
    keys = differing_overrides(runs)
    extra = [m for m in SECONDARY if m != metric]
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name, "status": run.status}
        row.update({k: run.overrides.get(k, "(default)") for k in keys})
        series = curve(run.metrics, metric)
        if series.empty and metric in run.test:  # e.g. --metric test/srcc
            series = pd.Series([run.test[metric]], index=[-1]).dropna()
        best, epoch, final = _best(series, mode)
        if epoch == -1:  # a test metric: the tested checkpoint's epoch, if its name says it
            epoch = run.test_epoch
        row.update({f"best {metric}": best, "best epoch": epoch, f"final {metric}": final})
        for name in extra:
            best2, _, final2 = _best(curve(run.metrics, name), "max")
            row.update({f"best {name}": best2, f"final {name}": final2})
        for name in TEST_COLUMNS:
            if name != metric and any(name in r.test for r in runs):
                row[name] = run.test.get(name, math.nan)
        row["epochs"] = _epochs(run.metrics)
        row["wall_time_s"] = run.wall_time_s
        row["error"] = run.error or ""
        rows.append(row)
    table = pd.DataFrame(rows)
    best_col = f"best {metric}"
    sign = -1.0 if mode == "max" else 1.0
    order = sorted(
        range(len(rows)),
        key=lambda i: (
            rows[i]["status"] == "failed",
            math.isnan(rows[i][best_col]),
            sign * rows[i][best_col] if not math.isnan(rows[i][best_col]) else 0.0,
            _natural_key(Path(rows[i]["run"])),
        ),
    )
    table = table.iloc[order].reset_index(drop=True)
    ranked = (table["status"] != "failed") & table[best_col].notna()
    table.insert(0, "rank", pd.array([i + 1 if r else None for i, r in enumerate(ranked)], "Int64"))
    for col in ("best epoch", "epochs"):
        table[col] = pd.array(table[col].tolist(), dtype="Int64")
    table["wall_time_s"] = pd.to_numeric(table["wall_time_s"], errors="coerce")
    if not table["error"].astype(bool).any():
        table = table.drop(columns="error")
    return table


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return NA
    seconds = round(max(seconds, 0.0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def shorten(text: str, width: int = 70) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def display_table(table: pd.DataFrame, error_width: int = 70) -> pd.DataFrame:
    """The table as text: 4 decimals, durations, n/a for missing values, errors shortened."""
    out = pd.DataFrame(index=table.index)
    for col in table.columns:
        values = table[col]
        if col == "wall_time_s":
            out["wall time"] = [format_duration(v) for v in values]
        elif col == "error":
            out[col] = [shorten(v, error_width) if v else "" for v in values]
        elif col == "rank":
            out[col] = ["-" if pd.isna(v) else str(v) for v in values]
        elif str(values.dtype) == "Int64":
            out[col] = [NA if pd.isna(v) else str(v) for v in values]
        elif pd.api.types.is_float_dtype(values):
            out[col] = [NA if pd.isna(v) else f"{v:.4f}" for v in values]
        else:
            out[col] = values.astype(str)
    return out


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table of ``display_table`` output (no `tabulate` needed)."""
    text = display_table(table)

    def cell(value: str) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    numeric = [
        pd.api.types.is_numeric_dtype(table[c]) for c in table.columns
    ]  # right-align numbers
    lines = [
        "| " + " | ".join(cell(c) for c in text.columns) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in text.itertuples(False)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- the report


def _png(fig: Figure) -> str:
    """The figure as a ``data:`` URI; no Software tag, so no URL is written at all."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _legend(ax: Any, n: int) -> None:
    if n > 8:  # many runs: outside, so the lines stay visible
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8)


def plot_curves(runs: Sequence[Run], metric: str, mode: str) -> Figure | None:
    """Validation curves of ``metric`` (and of val/loss) per run; the best epoch marked."""
    names = [metric] + (["val/loss"] if metric != "val/loss" else [])
    names = [n for n in names if any(len(curve(r.metrics, n)) for r in runs)]
    if not names:
        return None
    fig = Figure(figsize=(6.5 * len(names), 4.2))
    colors = _colors(len(runs))
    for k, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), k + 1)
        goal = mode if name == metric else "min"
        for run, color in zip(runs, colors):
            series = curve(run.metrics, name)
            if series.empty:
                continue
            ax.plot(series.index, series.to_numpy(), marker="o", ms=3, color=color, label=run.name)
            best, epoch, _ = _best(series, goal)
            ax.plot([epoch], [best], marker="*", ms=11, color=color, mec="black", mew=0.5)
        ax.set(xlabel="epoch", ylabel=name, title=f"{name} per epoch (* best)")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        _legend(ax, len(runs))
    fig.tight_layout()
    return fig


def plot_bars(table: pd.DataFrame, metric: str) -> Figure | None:
    """Best metrics per run as grouped horizontal bars, the best run on top."""
    others = [f"best {m}" for m in SECONDARY if m != metric]
    cols = [f"best {metric}"] + [c for c in (*others, *TEST_COLUMNS) if c in table.columns]
    cols = [c for c in cols if table[c].notna().any()]
    if not cols:
        return None
    n = len(table)
    fig = Figure(figsize=(8, 1.0 + 0.25 * n * len(cols) + 0.3 * n))
    ax = fig.add_subplot(1, 1, 1)
    height = 0.8 / len(cols)
    y = np.arange(n)[::-1].astype(float)  # rank 1 at the top
    for k, (col, color) in enumerate(zip(cols, _colors(len(cols)))):
        values = table[col].astype(float).to_numpy()
        pos = y + 0.4 - height * (k + 0.5)
        ax.barh(pos, np.nan_to_num(values), height=height, color=color, label=col)
        for p, v in zip(pos, values):
            label = f" {v:.3f}" if np.isfinite(v) else f" {NA}"
            ax.text(max(v, 0.0) if np.isfinite(v) else 0.0, p, label, va="center", fontsize=7)
    ax.set_yticks(y, table["run"].astype(str).tolist(), fontsize=8)
    ax.set(xlabel="value", title="best metrics per run")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # never over a bar
    fig.tight_layout()
    return fig


def plot_confusion(matrix: np.ndarray, run_name: str) -> Figure:
    """Test confusion matrix: colour by row share (recall), counts and shares written in."""
    n = matrix.shape[0]
    labels = list(CLASS_NAMES) if n == len(CLASS_NAMES) else [str(i) for i in range(n)]
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    fig = Figure(figsize=(5.2, 4.4))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{matrix[i, j]:.0f}\n{share[i, j]:.0%}", ha="center", va="center",
                    color="white" if share[i, j] > 0.6 else "black", fontsize=9)  # fmt: skip
    ax.set_xticks(range(n), labels)
    ax.set_yticks(range(n), labels)
    ax.set(xlabel="predicted", ylabel="true", title=f"test confusion matrix, run {run_name}")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    return fig


def plot_sources(runs: Sequence[Run]) -> Figure | None:
    """Best validation SRCC of each source, one bar per run in each source's group."""
    pairs = [(r, {s: v for s, v in source_srcc(r).items() if np.isfinite(v)}) for r in runs]
    pairs = [(r, d) for r, d in pairs if d]  # a run without values would only leave a gap
    if not pairs:
        return None
    runs, per_run = [r for r, _ in pairs], [d for _, d in pairs]
    sources = sorted({s for d in per_run for s in d})
    fig = Figure(figsize=(max(6.0, 1.2 + 0.35 * len(sources) * len(runs)), 4.2))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(runs)
    x = np.arange(len(sources), dtype=float)
    for k, (run, values, color) in enumerate(zip(runs, per_run, _colors(len(runs)))):
        heights = np.array([values.get(s, math.nan) for s in sources])
        ax.bar(x - 0.4 + width * (k + 0.5), np.nan_to_num(heights), width=width, color=color,
               label=run.name)  # fmt: skip
    ax.set_xticks(x, sources)
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set(ylabel="best val SRCC", title="validation SRCC per source (best epoch of each)")
    ax.grid(axis="y", alpha=0.3)
    _legend(ax, len(runs))
    fig.tight_layout()
    return fig


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f0f0f0; }
td:nth-child(2), td:nth-child(3) { text-align: left; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
.na { color: #888; font-style: italic; }
pre { white-space: pre-wrap; background: #f7f7f7; padding: 0.5em; }
"""


def _figure_html(title: str, render: Any, missing: str) -> str:
    """A section with the figure inline, or why there is none; a plot that fails says so."""
    try:
        fig = render()
    except Exception as e:  # a broken plot must not cost the table and the other plots
        log.warning("plot %r failed: %s", title, e)
        return f'<h2>{html.escape(title)}</h2><p class="na">plot failed: {html.escape(str(e))}</p>'
    if fig is None:
        return f'<h2>{html.escape(title)}</h2><p class="na">{html.escape(missing)}</p>'
    return f'<h2>{html.escape(title)}</h2><img src="{_png(fig)}" alt="{html.escape(title)}">'


def render_report(runs: Sequence[Run], table: pd.DataFrame, metric: str, mode: str) -> str:
    """The whole report as one HTML page; images are ``data:`` URIs, nothing is fetched."""
    by_name = {r.name: r for r in runs}
    ranked = [by_name[n] for n in table["run"]]
    best = next((by_name[n] for n, s in zip(table["run"], table["status"]) if s != "failed"), None)
    if best is not None and best.confusion is not None:
        matrix = best.confusion
        confusion = _figure_html(
            "Confusion matrix of the best run", lambda: plot_confusion(matrix, best.name), ""
        )
    else:
        why = (
            f"{NA}: the best run ({best.name}) has no confusion matrix in test_metrics.json"
            if best is not None
            else f"{NA}: no run completed"
        )
        confusion = f'<h2>Confusion matrix of the best run</h2><p class="na">{html.escape(why)}</p>'

    failed = [r for r in ranked if r.status == "failed"]
    failures = "".join(
        f"<li><b>{html.escape(r.name)}</b>: <code>{html.escape(r.error or NA)}</code></li>"
        for r in failed
    )
    notes = "".join(
        f"<li><b>{html.escape(r.name)}</b>: {html.escape('; '.join(r.notes))}</li>"
        for r in ranked
        if r.notes
    )
    shown = display_table(table, error_width=120)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>iqs-compare: {len(runs)} runs by {html.escape(metric)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{len(runs)} runs ranked by the best {html.escape(metric)} ({mode})</h1>",
        f"<p>Generated {html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))} from "
        f"{html.escape(os.path.commonpath([str(r.path) for r in runs]))}.</p>",
        shown.to_html(index=False, escape=True, border=0, na_rep=NA),
        "<h2>Failed runs</h2>",
        f"<ul>{failures}</ul>" if failures else "<p>None.</p>",
        _figure_html(
            "Validation curves",
            lambda: plot_curves(ranked, metric, mode),
            f"{NA}: no run logged {metric} or val/loss in csv/metrics.csv",
        ),
        _figure_html(
            "Best metrics per run", lambda: plot_bars(table, metric), f"{NA}: no metric values"
        ),
        confusion,
        _figure_html(
            "SRCC per source",
            lambda: plot_sources(ranked),
            f"{NA}: no val/<source>/srcc column in any csv/metrics.csv",
        ),
    ]
    if notes:
        parts += ["<h2>Missing or unreadable files</h2>", f"<ul>{notes}</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- the command


def compare(
    paths: Sequence[Path],
    out: Path | None = None,
    metric: str | None = None,
    mode: str | None = None,
) -> tuple[pd.DataFrame, Path]:
    """Read the runs under ``paths``, write compare.md, compare.csv and report.html in the
    output folder; return the table and that folder. FileNotFoundError when no run is found."""
    run_dirs = find_runs(paths)
    if not run_dirs:
        raise FileNotFoundError(
            "no run directory (with .hydra/config.yaml) in " + ", ".join(map(str, paths))
        )
    runs = load_runs(run_dirs)
    metric = metric or default_metric(runs)
    mode = mode or default_mode(runs, metric)
    if out is None:
        out = paths[0] if len(paths) == 1 and is_multirun_dir(paths[0]) else Path("compare")
    table = build_table(runs, metric, mode)
    atomic_write_text(out / "compare.md", to_markdown(table))
    atomic_write_text(out / "compare.csv", table.to_csv(index=False))
    atomic_write_text(out / "report.html", render_report(runs, table, metric, mode))
    return table, out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="iqs-compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run, multirun or parent folders")
    parser.add_argument(
        "--out", type=Path, help="output folder (default: the multirun folder, else ./compare)"
    )
    parser.add_argument(
        "--metric", help="rank by this metric (default: the runs' optimized_metric)"
    )
    parser.add_argument(
        "--mode", choices=["max", "min"], help="default: the checkpoint callback's, else by name"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    try:
        table, out = compare(args.paths, args.out, args.metric, args.mode)
    except FileNotFoundError as e:
        print(f"iqs-compare: {e}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 250, "display.max_columns", None):
        print(display_table(table, error_width=50).to_string(index=False))
    failed = table.loc[table["status"] == "failed", "run"].tolist()
    if failed:
        print(f"\n{len(failed)} failed: {', '.join(failed)} (errors in compare.md)")
    print(f"\nwritten: {out / 'compare.md'}, {out / 'compare.csv'}, {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
