"""SPAQ: 11,125 smartphone photos, technical quality, MOS 0-100 (no official split)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from iqs.data.sources.base import AnnotatedSource, SourceError
from iqs.data.sources.tables import LINE, drop_repeats, read_table, to_numbers

_NAME, _MOS = "Image name", "MOS"


class SPAQ(AnnotatedSource):
    """Scores from the Excel file as distributed or its CSV export (UTF-8 with BOM).

    Args:
        annotations: accepted locations of the annotation file, first found wins; ``.xlsx``
            files are read with openpyxl (first sheet), anything else as CSV.
    """

    family = "spaq"
    score_range = (0.0, 100.0)
    homepage = "https://github.com/h4nwei/SPAQ"
    layout = "Annotations/MOS and Image attribute scores.xlsx (or a CSV export), TestImage/*.jpg"
    image_dir = "TestImage"

    def __init__(
        self,
        name: str = "spaq",
        annotations: Sequence[str] = (
            "Annotations/MOS and Image attribute scores.xlsx",
            "SPAQ_annotations.csv",
        ),
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.candidates = annotations

    def annotations(self) -> pd.DataFrame:
        path = self.first_file(self.candidates, "annotation file")
        if path.suffix.lower() in (".xlsx", ".xlsm"):
            df = self._read_excel(path)
        else:
            df = read_table(path, [_NAME, _MOS], numeric=[_MOS], problems=self.problems,
                            ranges={_MOS: self.score_range}, unique=_NAME)  # fmt: skip
        return pd.DataFrame(
            {"id": df[_NAME].str.rsplit(".", n=1).str[0], "file": df[_NAME], "raw_score": df[_MOS]}
        )

    def _read_excel(self, path) -> pd.DataFrame:
        try:
            df = pd.read_excel(path, sheet_name=0, dtype=str, engine="openpyxl")
        except Exception as e:  # a damaged .xlsx raises zip, XML and openpyxl errors alike
            raise SourceError(f"{path}: not a readable Excel file ({type(e).__name__}: {e})") from e
        df.columns = [str(c).strip() for c in df.columns]
        missing = [c for c in (_NAME, _MOS) if c not in df.columns]
        if missing:
            raise SourceError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
        df = df[[_NAME, _MOS]].copy()
        df[LINE] = df.index + 2  # the spreadsheet's row number (row 1 is the header)
        df = df.dropna(how="all", subset=[_NAME, _MOS])
        df[_NAME] = df[_NAME].fillna("").str.strip()
        df = to_numbers(df, [_MOS], path, self.problems, {_MOS: self.score_range})
        return drop_repeats(df, _NAME, path, self.problems)
