"""KonIQ-10k: 10,073 in-the-wild photos, technical quality, crowd MOS with vote counts."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from iqs.data.sources.base import AnnotatedSource
from iqs.data.sources.tables import join_counts, read_table

log = logging.getLogger(__name__)

_OFFICIAL_SPLIT = {"training": "train", "validation": "val", "test": "test"}
_VOTES = ["c1", "c2", "c3", "c4", "c5"]


class KonIQ10k(AnnotatedSource):
    """Scores from ``koniq10k_scores_and_distributions.csv``; the official train/val/test split
    from the authors' ``koniq10k_distributions_sets.csv`` when present (else a seeded split).

    Args:
        score_column: ``MOS_zscore`` (0-100, the study's) or ``MOS`` (1-5).
        official_split: use the ``set`` column of the sets file.
    """

    family = "koniq"
    homepage = "https://database.mmsp-kn.de/koniq-10k-database.html"
    layout = (
        "koniq10k_scores_and_distributions.csv, koniq10k_distributions_sets.csv (optional, "
        "from github.com/subpic/koniq), 1024x768/<image_name>"
    )
    image_dir = "1024x768"

    def __init__(
        self,
        name: str = "koniq10k",
        scores_file: str = "koniq10k_scores_and_distributions.csv",
        sets_file: str | None = "koniq10k_distributions_sets.csv",
        score_column: str = "MOS_zscore",
        official_split: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        if score_column not in ("MOS_zscore", "MOS"):
            raise ValueError(f"{name}: score_column must be MOS_zscore or MOS, not {score_column}")
        self.scores_file, self.sets_file = scores_file, sets_file
        self.score_column = score_column
        self.score_range = (0.0, 100.0) if score_column == "MOS_zscore" else (1.0, 5.0)
        self.official_split = official_split

    def annotations(self) -> pd.DataFrame:
        path = self.file(self.scores_file)
        df = read_table(
            path,
            ["image_name", *_VOTES, self.score_column],
            numeric=[*_VOTES, self.score_column],
            problems=self.problems,
            ranges={self.score_column: self.score_range},
            unique="image_name",
        )
        out = pd.DataFrame(
            {
                "id": df["image_name"].str.rsplit(".", n=1).str[0],
                "file": df["image_name"],
                "raw_score": df[self.score_column],
                "histogram": join_counts(df[_VOTES]),
                "split": self._official_split(df["image_name"]),
            }
        )
        return out

    def _official_split(self, names: pd.Series) -> pd.Series | str:
        if not self.official_split or not self.sets_file:
            return ""
        path = self.root / self.sets_file
        if not path.is_file():
            log.warning(
                "%s: %s not found, using a seeded split instead of the official one",
                self.name,
                path,
            )
            return ""
        sets = read_table(path, ["image_name", "set"], problems=self.problems, unique="image_name")
        unknown = sets.loc[~sets["set"].isin(_OFFICIAL_SPLIT), ["_line", "set"]]
        for line, value in unknown.itertuples(index=False):
            self.problems.append(
                f"{path}:{line}: set {value!r} is not one of {list(_OFFICIAL_SPLIT)}"
            )
        split = {n: _OFFICIAL_SPLIT.get(s, "") for n, s in zip(sets["image_name"], sets["set"])}
        # Not map(split).fillna(""): where no name is found that is a float column, which
        # pandas 4 refuses to fill with text.
        unlisted = names[~names.isin(list(split))]
        if len(unlisted):  # they get a seeded split, mixed into the official one
            self.problems.append(
                f"{path}: {len(unlisted)} image(s) of {self.scores_file} not listed, e.g. "
                f"{unlisted.iloc[0]!r}; they get a seeded split"
            )
        return names.map(lambda name: split.get(name, ""))
