"""Leak-free splits: whole groups are assigned, never single rows."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from iqs.data.manifest import SPLITS


def assign_group_splits(
    df: pd.DataFrame, fractions: Mapping[str, float], seed: int
) -> pd.DataFrame:
    """Fill empty ``split`` cells by shuffling the unassigned groups with ``seed``.

    Rows that already carry a split (an official split, a fixed one) keep it. Each split gets at
    least one group when there are enough groups, so a tiny source still has a test set.
    """
    if set(fractions) != set(SPLITS):
        raise ValueError(f"split fractions must name {SPLITS}, got {list(fractions)}")
    total = sum(fractions.values())
    if total <= 0 or any(v < 0 for v in fractions.values()):
        raise ValueError(f"split fractions must be non-negative and sum > 0, got {fractions}")
    df = df.copy()
    todo = df["split"] == ""
    if not todo.any():
        return df
    groups = np.array(sorted(df.loc[todo, "group"].unique()))
    groups = groups[np.random.default_rng(seed).permutation(len(groups))]
    counts = _counts(len(groups), [fractions[s] / total for s in SPLITS])
    bounds = np.cumsum([0, *counts])
    split_of = {g: s for s, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]) for g in groups[lo:hi]}
    df.loc[todo, "split"] = df.loc[todo, "group"].map(split_of)
    return df


def _counts(n: int, shares: list[float]) -> list[int]:
    """Largest-remainder rounding, then make sure each wanted split gets one group if possible."""
    raw = np.array(shares) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[: n - counts.sum()]:
        counts[i] += 1
    for i, share in enumerate(shares):
        if share > 0 and counts[i] == 0:
            donor = int(np.argmax(counts))
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[i] += 1
    return counts.tolist()
