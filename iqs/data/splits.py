"""Leak-free splits: whole groups are assigned, never single rows.

A source may fix a row's split (an official split), leave it empty, or mark it ``trainval``
(official test elsewhere, validation to be carved). A split given to any row of a group holds
for the whole group, whichever source brought it (AVA and EVA share photos); the remaining groups
are split with a seed, stratified by source and class.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from iqs.data.manifest import SPLITS, TRAINVAL, ManifestError


def assign_group_splits(
    df: pd.DataFrame, fractions: Mapping[str, float], seed: int
) -> pd.DataFrame:
    """Fill empty and ``trainval`` splits by group, keeping every split a source gave.

    Raises:
        ManifestError: two rows of one group were given different splits.
    """
    if set(fractions) != set(SPLITS):
        raise ValueError(f"split fractions must name {SPLITS}, got {list(fractions)}")
    if sum(fractions.values()) <= 0 or any(v < 0 for v in fractions.values()):
        raise ValueError(f"split fractions must be non-negative and sum > 0, got {fractions}")
    df = df.copy()
    given = df.loc[df["split"].isin(SPLITS), ["group", "split"]].drop_duplicates()
    conflicts = given.loc[given["group"].duplicated(keep=False)]
    if len(conflicts):
        example = conflicts.groupby("group")["split"].agg(sorted).head(3).to_dict()
        raise ManifestError(
            f"{conflicts['group'].nunique()} group(s) were given different splits by their "
            f"sources, e.g. {example}"
        )
    split_of = dict(zip(given["group"], given["split"]))
    constrained = df.loc[df["split"] == TRAINVAL, "group"]
    bad = constrained[constrained.map(split_of) == "test"].unique()
    if len(bad):
        raise ManifestError(
            f"group(s) {list(bad[:5])} are 'trainval' in one source, 'test' in another"
        )

    todo = df.loc[~df["group"].isin(split_of)]
    if len(todo):
        # One stratum per group: its first row's source and its most common class.
        by_group = todo.groupby("group", sort=True)
        label_counts = todo.groupby(["group", "label"]).size().rename("n").reset_index()
        mode = label_counts.sort_values(["group", "n", "label"], ascending=[True, False, True])
        groups = pd.DataFrame(
            {
                "source": by_group["source"].first(),
                "label": mode.drop_duplicates("group").set_index("group")["label"],
                "trainval": todo["split"].eq(TRAINVAL).groupby(todo["group"]).any(),
            }
        )
        strata = groups["source"].astype(str) + "/" + groups["label"].astype(str)
        for trainval, part in groups.groupby("trainval"):
            shares = {s: fractions[s] for s in (("train", "val") if trainval else SPLITS)}
            split_of.update(_split(part.index.to_numpy(), strata[part.index], shares, seed))
    df["split"] = df["group"].map(split_of)
    return df


def _split(groups: np.ndarray, strata: pd.Series, shares: dict[str, float], seed: int) -> dict:
    """Groups -> split name with sklearn's stratified shuffle, by shares; a split with a
    positive share gets at least one group when there are enough groups."""
    result: dict = {}
    names = [s for s in shares if shares[s] > 0]
    counts = strata.value_counts()
    labels = strata.where(strata.map(counts) >= 2, "rare").to_numpy()
    remaining = groups
    total = sum(shares[s] for s in names)
    for name in names[:0:-1]:  # peel off the last splits (test, then val), keep train last
        if len(remaining) < 2:
            break
        size = max(1, round(len(remaining) * shares[name] / total))
        size = min(size, len(remaining) - 1)
        try:
            rest, picked, rest_labels, _ = train_test_split(
                remaining, labels, test_size=size, random_state=seed, stratify=labels
            )
        except ValueError:  # a stratum too small to stratify: shuffle without it
            rest, picked, rest_labels, _ = train_test_split(
                remaining, labels, test_size=size, random_state=seed
            )
        result.update(dict.fromkeys(picked, name))
        remaining, labels = rest, rest_labels
        total -= shares[name]
    result.update(dict.fromkeys(remaining, names[0]))
    return result
