"""A folder of your own photos with a CSV that scores or labels them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from iqs.data.labels import NUM_CLASSES, class_index
from iqs.data.sources.base import AnnotatedSource, SourceError
from iqs.data.sources.tables import LINE, drop_repeats, read_table, to_numbers


class Folder(AnnotatedSource):
    """Photos under ``root`` listed in a CSV with a ``path`` column (relative to ``root``) and
    a ``score`` column, a ``label`` column (``rejected``/``pending``/``accepted`` or 0/1/2), or
    both. Scores are labelled by the configured rule; given labels are used as they are.

    Args:
        annotations: the CSV, relative to ``root`` or absolute.
        score_range: the scores' range, mapped to [0, 1] (higher is better).
    """

    score_range = (0.0, 1.0)
    homepage = "your own photos"
    layout = "labels.csv (path,score or path,label) and the photos it lists"

    def __init__(
        self,
        name: str = "folder",
        annotations: str = "labels.csv",
        score_range: Sequence[float] = (0.0, 1.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.family = name  # two folders are two photo collections
        self.annotations_file = annotations
        self.score_range = (float(score_range[0]), float(score_range[1]))
        if not self.score_range[0] < self.score_range[1]:
            raise SourceError(f"{name}: score_range must be ascending, got {list(score_range)}")

    def annotations(self) -> pd.DataFrame:
        path = self.file(self.annotations_file, "labels CSV")
        df = read_table(path, None, problems=self.problems)
        has_score, has_label = "score" in df, "label" in df
        if "path" not in df or not (has_score or has_label):
            raise SourceError(
                f"{path}: needs a 'path' column and a 'score' or 'label' column; "
                f"found {[c for c in df.columns if c != LINE]}"
            )
        df = drop_repeats(df, "path", path, self.problems)
        if has_score:
            df = to_numbers(df, ["score"], path, self.problems, {"score": self.score_range})
        df["path"] = df["path"].str.strip().map(os.path.normpath)
        # Not p.startswith(".."): that would refuse a photo named "..2019.jpg".
        outside = df["path"].map(lambda p: os.path.isabs(p) or p.split(os.sep)[0] == "..")
        for line, p in df.loc[outside, ["_line", "path"]].itertuples(index=False):
            self.problems.append(f"{path}:{line}: path {p!r} must be relative to {self.root}")
        df = df.loc[~outside]
        out = pd.DataFrame({"id": df["path"], "file": df["path"]})
        if has_label:
            labels = []
            for line, value in df[["_line", "label"]].itertuples(index=False):
                try:
                    labels.append(class_index(value))
                except ValueError as e:
                    self.problems.append(f"{path}:{line}: {e}")
                    labels.append(None)
            out["label"] = labels
        lo, hi = self.score_range
        out["raw_score"] = (
            df["score"].to_numpy()
            if has_score
            else lo + (hi - lo) * out["label"].astype(float).to_numpy() / (NUM_CLASSES - 1)
        )
        keep = np.ones(len(out), dtype=bool)
        if has_label:
            keep &= out["label"].notna().to_numpy()
            out["label"] = out["label"].fillna(0).astype(np.int64)
        return out.loc[keep].reset_index(drop=True)
