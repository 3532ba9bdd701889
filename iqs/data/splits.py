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

from iqs.data.labels import NUM_CLASSES
from iqs.data.manifest import SPLITS, TRAINVAL, ManifestError

# Integer codes per group and row rather than group-name tables: AVA has ~150k groups, and
# string-keyed groupbys and dicts of them took ~55 MB at the peak.
_NONE = -1  # a group without a given split
_TRAINVAL = len(SPLITS)  # ``trainval`` after the codes of SPLITS


def assign_group_splits(
    df: pd.DataFrame, fractions: Mapping[str, float], seed: int, fixed: pd.Series | None = None
) -> pd.DataFrame:
    """Fill empty and ``trainval`` splits by group, keeping every split a source gave.

    ``fixed`` (split by ``image_id``) holds the splits a data set fixes for its photos even where
    it brought no row of them (AVA's test list, for a photo whose AVA row the label rule, a
    missing file or ``max_samples`` left out): rows of those photos without a split take it.

    Raises:
        ManifestError: two rows of one group were given different splits.
    """
    if set(fractions) != set(SPLITS):
        raise ValueError(f"split fractions must name {SPLITS}, got {list(fractions)}")
    if sum(fractions.values()) <= 0 or any(v < 0 for v in fractions.values()):
        raise ValueError(f"split fractions must be non-negative and sum > 0, got {fractions}")
    if fixed is not None and len(fixed):
        empty = df["split"].eq("")
        if empty.any():
            df = df.assign(split=df["image_id"].where(empty).map(fixed).fillna(df["split"]))
    group, names = pd.factorize(df["group"], sort=True)
    split_codes = {**{s: i for i, s in enumerate(SPLITS)}, TRAINVAL: _TRAINVAL}
    row_split = df["split"].map(split_codes).fillna(_NONE).to_numpy(np.int64)
    split_of = _given_splits(group, row_split, names)

    todo = split_of[group] == _NONE
    if todo.any():
        # One stratum per group: its first row's source and its most common class (the
        # smallest on ties).
        rows = np.flatnonzero(todo)
        codes, first = np.unique(group[rows], return_index=True)
        source, source_names = pd.factorize(df["source"].to_numpy()[rows][first])
        counts = np.bincount(
            group[rows] * NUM_CLASSES + df["label"].to_numpy(np.int64)[rows],
            minlength=len(names) * NUM_CLASSES,
        ).reshape(len(names), NUM_CLASSES)[codes]
        stratum = source * NUM_CLASSES + counts.argmax(axis=1)
        stratum_names = [f"{s}/{c}" for s in source_names for c in range(NUM_CLASSES)]
        trainval = np.bincount(group[rows], row_split[rows] == _TRAINVAL, len(names))[codes] > 0
        for is_trainval in (False, True):
            part = trainval == is_trainval
            if not part.any():
                continue
            shares = {s: fractions[s] for s in (("train", "val") if is_trainval else SPLITS)}
            for picked, name in _split(codes[part], stratum[part], stratum_names, shares, seed):
                split_of[picked] = SPLITS.index(name)
    out = df.copy(deep=False)  # copy-on-write: only the new column is new memory
    out["split"] = np.asarray(SPLITS, dtype=object)[split_of[group]]
    return out


def _given_splits(group: np.ndarray, row_split: np.ndarray, names: pd.Index) -> np.ndarray:
    """Per group: the code of the split its rows were given, or ``_NONE``.

    Raises:
        ManifestError: a group was given two splits, or is ``trainval`` and ``test``.
    """
    given = (row_split >= 0) & (row_split != _TRAINVAL)
    pairs = pd.DataFrame({"group": group[given], "split": row_split[given]}).drop_duplicates()
    twice = pairs["group"].duplicated(keep=False)
    if twice.any():
        conflicts = pairs.loc[twice]
        example = (
            conflicts.assign(group=names[conflicts["group"]], split=conflicts["split"].map(
                dict(enumerate(SPLITS))))
            .groupby("group")["split"].agg(sorted).head(3).to_dict()
        )  # fmt: skip
        raise ManifestError(
            f"{conflicts['group'].nunique()} group(s) were given different splits by their "
            f"sources, e.g. {example}"
        )
    split_of = np.full(len(names), _NONE, dtype=np.int64)
    split_of[pairs["group"].to_numpy()] = pairs["split"].to_numpy()
    test = SPLITS.index("test")
    bad = np.unique(group[(row_split == _TRAINVAL) & (split_of[group] == test)])
    if len(bad):
        raise ManifestError(
            f"group(s) {list(names[bad[:5]])} are 'trainval' in one source, 'test' in another"
        )
    return split_of


def _split(
    groups: np.ndarray,
    strata: np.ndarray,
    stratum_names: list[str],
    shares: dict[str, float],
    seed: int,
) -> list[tuple[np.ndarray, str]]:
    """Groups -> (groups, split name) parts with sklearn's stratified shuffle, by shares; a
    split with a positive share gets at least one group when there are enough groups."""
    result: list[tuple[np.ndarray, str]] = []
    names = [s for s in shares if shares[s] > 0]
    labels = _stratum_labels(strata, stratum_names)
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
        result.append((picked, name))
        remaining, labels = rest, rest_labels
        total -= shares[name]
    result.append((remaining, names[0]))
    return result


def _stratum_labels(strata: np.ndarray, stratum_names: list[str]) -> np.ndarray:
    """Stratum codes -> sklearn's stratify labels: strata of one group join a ``rare`` stratum,
    and the labels are ranks of the names (``<source>/<class>``, ``rare``) in sorted order, so
    sklearn meets the strata in the order of their names whatever the codes were."""
    codes, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    named = ["rare" if n < 2 else stratum_names[c] for c, n in zip(codes, counts)]
    rank = {name: i for i, name in enumerate(sorted(set(named)))}
    return np.array([rank[name] for name in named], dtype=np.int64)[inverse]
