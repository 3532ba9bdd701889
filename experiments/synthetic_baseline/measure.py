"""Train the default configuration once per seed and tabulate held-out test metrics and time.

    .venv/bin/python experiments/synthetic_baseline/measure.py --seeds 1 2 3 [-- extra overrides]

Each seed is a separate `iqs-train` process (as `make train` runs it), so the wall time includes
start-up and, for a seed not seen before, generating its synthetic data. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

KEYS = ("test/srcc", "test/plcc", "test/f1_macro", "test/acc")


def run(seed: int, log_dir: Path, overrides: list[str]) -> dict[str, float]:
    out = log_dir / f"seed_{seed}"
    cmd = [sys.executable, "-m", "iqs.train", f"seed={seed}", f"hydra.run.dir={out}",
           "logger=csv", "tags=[baseline]", *overrides]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    metrics = json.loads((out / "test_metrics.json").read_text())["metrics"]
    return {"wall_s": wall, **{k: metrics[k] for k in KEYS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--log-dir", type=Path, default=Path("outputs/baseline"))
    parser.add_argument("overrides", nargs="*", help="Hydra overrides passed to every run")
    args = parser.parse_args()
    rows = {s: run(s, args.log_dir, args.overrides) for s in args.seeds}
    cols = ["wall_s", *KEYS]
    print("| seed | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for seed, row in rows.items():
        print(f"| {seed} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    if len(rows) > 1:
        stats = {c: [r[c] for r in rows.values()] for c in cols}
        print(
            "| mean ± sd | "
            + " | ".join(
                f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}" for v in stats.values()
            )
            + " |"
        )


if __name__ == "__main__":
    main()
