"""KADID-10k: 81 reference photos x 25 distortions x 5 levels, MOS 1-5 (column ``dmos``)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from iqs.data.sources.base import AnnotatedSource
from iqs.data.sources.tables import read_table


class KADID10k(AnnotatedSource):
    """``dmos.csv`` (``dist_img,ref_img,dmos,var``). Despite its name ``dmos`` is a MOS, higher
    is better. Rows are grouped by reference image, so the distortions of one photo never sit
    in two splits.
    """

    family = "kadid"
    score_range = (1.0, 5.0)
    homepage = "https://database.mmsp-kn.de/kadid-10k-database.html"
    layout = "dmos.csv, images/<dist_img>.png"
    image_dir = "images"

    def __init__(
        self,
        name: str = "kadid10k",
        annotations: str = "dmos.csv",
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.annotations_file = annotations

    def annotations(self) -> pd.DataFrame:
        df = read_table(
            self.file(self.annotations_file),
            ["dist_img", "ref_img", "dmos"],
            numeric=["dmos"],
            problems=self.problems,
            ranges={"dmos": self.score_range},
            unique="dist_img",
        )
        return pd.DataFrame(
            {
                "id": df["dist_img"].str.rsplit(".", n=1).str[0],
                "file": df["dist_img"],
                "raw_score": df["dmos"],
                "group": df["ref_img"].str.rsplit(".", n=1).str[0],
            }
        )
