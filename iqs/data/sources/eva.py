"""EVA: 4,070 AVA photos re-rated 0-10 with explanations; one row per vote, aggregated here."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from iqs.data.sources.base import AnnotatedSource
from iqs.data.sources.tables import read_table


class EVA(AnnotatedSource):
    """``votes_filtered.csv`` (``=``-delimited): image score = mean of its votes, with an
    11-bin (0..10) vote histogram. EVA ids are AVA ids: both sources share the ``ava`` identity
    family, so a photo in both lands in one split.
    """

    family = "ava"
    score_range = (0.0, 10.0)
    homepage = "https://github.com/kang-gnak/eva-dataset"
    layout = "data/votes_filtered.csv (or votes_filtered.csv), EVA_together/<image_id>.jpg"
    image_dir = "EVA_together"

    def __init__(
        self,
        name: str = "eva",
        annotations: tuple[str, ...] | list[str] = (
            "data/votes_filtered.csv",
            "votes_filtered.csv",
        ),
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.candidates = annotations

    def annotations(self) -> pd.DataFrame:
        path = self.first_file(self.candidates, "votes file")
        votes = read_table(path, ["image_id", "score"], numeric=["score"], delimiter="=",
                           problems=self.problems, ranges={"score": self.score_range})  # fmt: skip
        votes["image_id"] = votes["image_id"].str.strip()
        votes["bin"] = votes["score"].round().astype(np.int64)
        per_image = votes.groupby("image_id", sort=True)
        hist = pd.crosstab(votes["image_id"], votes["bin"]).reindex(columns=range(11), fill_value=0)
        # Not hist.agg(" ".join, axis=1): on no rows (every vote bad) that returns a DataFrame.
        hist_text = pd.Series([" ".join(map(str, h)) for h in hist.to_numpy()], index=hist.index)
        ids = per_image["score"].mean().index
        return pd.DataFrame(
            {
                "id": ids,
                "file": ids + ".jpg",
                "raw_score": per_image["score"].mean().to_numpy(),
                "histogram": hist_text.reindex(ids).to_numpy(),
            }
        )
