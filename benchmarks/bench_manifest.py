"""How long the manifest of an AVA-sized table takes to build (target: seconds).

Writes a generated ``AVA.txt`` of 255,500 rows in the real format (and a 20,000-id test list),
then times each stage the data module runs: parsing, labelling, the image-existence check
(one directory listing), validation and the leak-free split.
Run: ``python benchmarks/bench_manifest.py``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from iqs.data import manifest as mf
from iqs.data.sources.ava import AVA
from iqs.data.splits import assign_group_splits

STUDY = OmegaConf.load(Path(__file__).parents[1] / "conf" / "data" / "labels" / "study.yaml")


def write_ava(root: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    ids = rng.choice(1_000_000, size=rows, replace=False)
    # Votes peaked around a per-photo mean near AVA's (about 5.4 +- 0.7).
    centre = rng.normal(5.4, 0.9, size=(rows, 1))
    weights = np.exp(-0.5 * ((np.arange(1, 11) - centre) / 1.4) ** 2)
    counts = rng.multinomial(200, weights / weights.sum(axis=1, keepdims=True))
    table = np.column_stack(
        [
            np.arange(1, rows + 1),
            ids,
            counts,
            rng.integers(0, 60, (rows, 2)),
            rng.integers(1, 1400, rows),
        ]
    )
    np.savetxt(root / "AVA.txt", table, fmt="%d", delimiter=" ")
    (root / "generic_test.jpgl").write_text("\n".join(map(str, ids[:20_000])) + "\n")
    (root / "images").mkdir()
    # A share of the images exist, so the existence check has real work to do.
    for image_id in ids[: rows // 100]:
        (root / "images" / f"{image_id}.jpg").touch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=255_500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_ava(root, args.rows)
        print(f"AVA.txt: {args.rows} rows, {os.path.getsize(root / 'AVA.txt') / 2**20:.1f} MiB")
        times: dict[str, float] = {}
        src = AVA(root=root, labels=dict(STUDY.ava), check_files=False)
        t = time.perf_counter()
        ann = src.annotations()
        times["parse AVA.txt + test list"] = time.perf_counter() - t
        t = time.perf_counter()
        df = src.manifest()
        times["manifest (parse + label + ids)"] = time.perf_counter() - t
        src = AVA(root=root, labels=dict(STUDY.ava), check_files=True)
        t = time.perf_counter()
        checked = src.manifest()
        times["manifest + image existence check"] = time.perf_counter() - t
        t = time.perf_counter()
        df = mf.validate(df.assign(source="ava"))
        times["validate"] = time.perf_counter() - t
        t = time.perf_counter()
        split = assign_group_splits(df, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
        mf.check_no_leak(split)
        times["split + leak check"] = time.perf_counter() - t
    total = (
        times["manifest (parse + label + ids)"] + times["validate"] + times["split + leak check"]
    )
    for name, sec in times.items():
        print(f"{name:36s} {sec:7.2f} s")
    print(
        f"{'total (manifest, validate, split)':36s} {total:7.2f} s for {len(df)} labelled rows "
        f"({len(ann)} parsed, {len(checked)} with an image file)"
    )
    print(pd.Series(split["split"]).value_counts().to_dict())


if __name__ == "__main__":
    main()
