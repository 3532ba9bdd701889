"""AVA: ~255,500 photos from dpchallenge.com, aesthetics, 1-10 vote counts per photo."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from iqs.data.sources.base import AnnotatedSource
from iqs.data.sources.tables import join_counts, read_id_list, read_table

_VOTES = [f"v{k}" for k in range(1, 11)]
_COLUMNS = ["index", "id", *_VOTES, "tag1", "tag2", "challenge"]


class AVA(AnnotatedSource):
    """``AVA.txt`` (15 space-separated columns, no header) and the official test list.

    The score is the mean vote, ``sum(k * count_k) / sum(count_k)``. The official protocol tests
    on ``generic_test.jpgl`` and trains on every other id; those rows are marked ``trainval`` so
    the data module carves the validation split from them.

    Args:
        test_list: accepted locations of ``generic_test.jpgl``, first found wins.
        official_split: use it (else every row gets a seeded train/val/test split).
    """

    family = "ava"
    score_range = (1.0, 10.0)
    homepage = "https://github.com/imfing/ava_downloader (AVA: Murray et al., CVPR 2012)"
    layout = "AVA.txt, aesthetics_image_lists/generic_test.jpgl, images/<id>.jpg"
    image_dir = "images"

    def __init__(
        self,
        name: str = "ava",
        annotations: str = "AVA.txt",
        test_list: Sequence[str] = (
            "aesthetics_image_lists/generic_test.jpgl",
            "generic_test.jpgl",
        ),
        official_split: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.annotations_file = annotations
        self.test_list = test_list
        self.official_split = official_split

    def test_ids(self) -> list[str]:
        return read_id_list(self.first_file(self.test_list, "official test list"))

    def official_splits(self) -> pd.Series:
        """The official test list holds for EVA's copies of these photos too, also where AVA's
        own row is left out (its mean in the study rule's dropped band, a missing file)."""
        if not self.official_split:
            return super().official_splits()
        ids = pd.Index(sorted(set(self.test_ids())))
        return pd.Series("test", index=f"{self.family}:" + ids, dtype=object)

    def annotations(self) -> pd.DataFrame:
        ids, mean, histogram = self._votes()
        split: np.ndarray | str = ""
        if self.official_split:
            test = set(self.test_ids())
            # Indexing an object array shares its two strings: np.where would make a string
            # object per row (~15 MB for AVA).
            names = np.array(["trainval", "test"], dtype=object)
            split = names[ids.isin(test).to_numpy(dtype=np.intp)]
        return pd.DataFrame(
            {
                "id": ids.to_numpy(),
                "file": (ids + ".jpg").to_numpy(),
                "raw_score": mean,
                "histogram": histogram,
                "split": split,
            }
        )

    def _votes(self) -> tuple[pd.Series, np.ndarray, np.ndarray]:
        """Ids, mean votes and histogram text of the rows with usable votes. Its own function
        so that the parsed table (~20 MB of vote counts for AVA) is freed before more text is
        made."""
        path = self.file(self.annotations_file)
        df = read_table(
            path,
            _COLUMNS,
            numeric=_VOTES,
            delimiter=None,
            header=False,
            problems=self.problems,
            usecols=["id", *_VOTES],
            unique="id",
        )
        counts = df[_VOTES].to_numpy(np.float64)
        with np.errstate(over="ignore"):  # reported below
            total = counts.sum(axis=1)
        # A negative or overflowing count would make a mean outside 1..10, or NaN.
        damaged = (counts < 0).any(axis=1) | ~np.isfinite(total)
        for line in df.loc[damaged, "_line"]:
            self.problems.append(f"{path}:{line}: a negative or huge vote count, left out")
        empty = ~damaged & (total <= 0)
        for line in df.loc[empty, "_line"]:
            self.problems.append(f"{path}:{line}: no votes, left out")
        keep = ~(damaged | empty)
        if not keep.all():  # copies of 255,500 rows only when there is something to drop
            df, counts, total = df.loc[keep], counts[keep], total[keep]
        mean = counts @ np.arange(1, 11, dtype=np.float64) / total
        ids = df["id"].str.strip().reset_index(drop=True)
        return ids, mean, join_counts(counts).to_numpy()
