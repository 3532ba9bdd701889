"""The interface every data source implements, and what sources of real data sets share."""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from iqs.data.labels import DROP, LabelRule

log = logging.getLogger(__name__)


class SourceError(RuntimeError):
    """A data source cannot be read; the message says which file, row or key and what to do."""


class Source(ABC):
    """Produces manifest rows (see :mod:`iqs.data.manifest`) for one data set.

    ``prepare`` does the slow, once-per-machine work (generating, caching) and runs on one process
    only; ``manifest`` must then be cheap and deterministic, as every process calls it.

    Args:
        name: the source's name in the mix (metric prefix ``val/<name>/...``).
        enabled: a mix can switch a source off (``data.sources.<name>.enabled=false``).
        max_samples: keep at most this many rows (a seeded sample), e.g. to balance a mix.
        weight: relative chance of each of this source's rows to be drawn in training
            (1 for every source: plain shuffling).
        cache: read images through the data module's resize cache (large photos).
    """

    def __init__(
        self,
        name: str,
        enabled: bool = True,
        max_samples: int | None = None,
        weight: float = 1.0,
        cache: bool = False,
    ) -> None:
        self.name = name
        self.enabled = bool(enabled)
        self.max_samples = None if max_samples is None else int(max_samples)
        self.weight = float(weight)
        if self.weight <= 0:
            raise SourceError(f"{name}: weight must be positive, got {weight}")
        self.cache = bool(cache)
        # Bad rows and missing files found while reading, as "<file>:<line>: <what>" lines.
        self.problems: list[str] = []

    def prepare(self) -> None:  # noqa: B027 - most sources have nothing to prepare
        """Create anything the manifest needs on disk."""

    @abstractmethod
    def manifest(self) -> pd.DataFrame:
        """Return the manifest rows of this source, ``source`` column set to ``self.name``."""

    def official_splits(self) -> pd.Series:
        """Splits (by ``image_id``) this data set fixes for photos that other sources may bring
        too, whether or not this source keeps a row of them (see ``assign_group_splits``)."""
        return pd.Series(dtype=object)


class AnnotatedSource(Source):
    """A published data set: an annotation file with scores, and a folder of images.

    Subclasses read the annotation files in :meth:`annotations` (one row per image, columns
    ``id``, ``file`` relative to the image folder, ``raw_score`` on the data set's own scale,
    optional ``histogram``, ``split``, ``group`` and ``label`` when the data set gives classes
    rather than scores); this class turns them into manifest rows:
    normalised score, label by the configured rule, identity, and only images that exist.

    Args:
        root: the data set's folder (``paths.data_dir/<name>`` by default).
        labels: the label rule on the raw score (``{bands, otherwise}``, see
            :class:`~iqs.data.labels.LabelRule`).
        check_files: leave out (and report) rows whose image file does not exist.
        image_dir: the images' folder under the root (default: the data set's own layout).
    """

    #: image identity family: two sources of one family share ids (AVA and EVA).
    family: ClassVar[str]
    #: the raw score's documented range, mapped linearly to [0, 1] (higher is better).
    score_range: ClassVar[tuple[float, float]]
    #: where to download the data set, and what the root folder must hold.
    homepage: ClassVar[str]
    layout: ClassVar[str]
    image_dir: str = ""

    def __init__(
        self,
        name: str,
        root: str | os.PathLike,
        labels: Mapping[str, Any] | LabelRule,
        check_files: bool = True,
        cache: bool = True,
        image_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, cache=cache, **kwargs)
        if image_dir is not None:  # else the data set's own folder name (class attribute)
            self.image_dir = image_dir
        self.root = Path(root).expanduser()
        self.rule = LabelRule.from_config(labels)
        self.check_files = bool(check_files)

    @abstractmethod
    def annotations(self) -> pd.DataFrame:
        """Parsed annotation rows (see the class docstring); bad rows go to ``problems``."""

    def file(self, relative: str | os.PathLike, what: str = "annotation file") -> Path:
        """A file under the root; a clear error when the root or the file is missing."""
        return self.first_file([relative], what)

    def first_file(
        self, candidates: str | os.PathLike | Sequence[str | os.PathLike], what: str
    ) -> Path:
        """The first existing of one or several accepted locations (absolute, or under the
        root); a config may give a single path or a list."""
        self.require_root()
        if isinstance(candidates, (str, os.PathLike)):
            candidates = [candidates]
        paths = [self.root / c for c in candidates]
        for p in paths:
            if p.is_file():
                return p
        raise SourceError(
            f"{self.name}: {what} not found; looked for {[str(p) for p in paths]}. "
            f"Expected layout under {self.root}: {self.layout}"
        )

    def require_root(self) -> None:
        if not self.root.is_dir():
            raise SourceError(
                f"{self.name}: data set not found at {self.root}. Download it from "
                f"{self.homepage} and unpack it there (expected: {self.layout}), or point "
                f"data.sources.{self.name}.root at its folder."
            )

    def manifest(self, include_dropped: bool = False) -> pd.DataFrame:
        """Manifest rows of the images that exist; ``include_dropped`` keeps the rows the label
        rule leaves out (label ``DROP``), e.g. to check every image of a download."""
        df = self._inside_root(self.annotations())
        if "label" not in df:
            self._check_rule_scale()
        labels = df["label"] if "label" in df else self.rule(df["raw_score"].to_numpy())
        dropped = np.asarray(labels == DROP)
        if dropped.any() and not include_dropped:
            # Before any path or id text is made: AVA's rule leaves out ~40% of 255,500 rows.
            log.info("%s: %d rows left out by the label rule %s", self.name, dropped.sum(),
                     self.rule)  # fmt: skip
            df, labels = df.loc[~dropped].reset_index(drop=True), labels[~dropped]
        lo, hi = self.score_range
        out = pd.DataFrame(
            {
                "path": str(self.root / self.image_dir) + os.sep + df["file"].astype(str),
                "source": self.name,
                "image_id": f"{self.family}:" + df["id"].astype(str),
                "split": df.get("split", ""),
                # not clipped: each source leaves out (and reports) scores outside its range
                "score": (df["raw_score"].to_numpy(np.float64) - lo) / (hi - lo),
                "label": np.asarray(labels),
                "histogram": df.get("histogram", ""),
                "raw_score": df["raw_score"].to_numpy(),
            }
        )
        out.insert(3, "group", out["image_id"])
        if "group" in df:
            out["group"] = f"{self.family}:" + df["group"].astype(str)
        if self.check_files:
            out = self._existing(out)
        return out.reset_index(drop=True)

    def _check_rule_scale(self) -> None:
        """A label rule written for another scale (KonIQ's 0-100 rule on its 1-5 ``MOS``
        column) gives every photo one class: reported, as the run would still go on."""
        lo, hi = self.score_range
        outside = sorted({b for _, bounds in self.rule.bands for b in bounds.values()
                          if not lo <= b <= hi})  # fmt: skip
        if outside:
            self.problems.append(
                f"{self.name}: the label rule's bound(s) {outside} lie outside the scores' range "
                f"{lo:g}..{hi:g}: was the rule written for another scale? ({self.rule})"
            )

    def _inside_root(self, df: pd.DataFrame) -> pd.DataFrame:
        """Rows whose file name stays inside the image folder: annotation files come from the
        internet, and ``../../x``, ``/x`` or a NUL byte must not send training elsewhere."""
        outside = df["file"].astype(str).map(_not_inside).to_numpy(dtype=bool)
        for name in df.loc[outside, "file"]:
            self.problems.append(
                f"{self.name}: file name {name!r} is not a path inside {self.root}, left out"
            )
        return df.loc[~outside].reset_index(drop=True)

    def _existing(self, df: pd.DataFrame) -> pd.DataFrame:
        """Rows whose image exists; one directory listing per folder, not one stat per row."""
        listing: dict[str, set[str]] = {}
        exists = np.zeros(len(df), dtype=bool)
        for i, path in enumerate(df["path"]):
            folder, _, name = path.rpartition(os.sep)
            if folder not in listing:
                try:
                    listing[folder] = set(os.listdir(folder))
                except OSError:
                    listing[folder] = set()
            exists[i] = name in listing[folder]
        missing = df.loc[~exists, "path"]
        if len(missing):
            folders = sorted({p.rpartition(os.sep)[0] for p in missing})
            self.problems.append(
                f"{self.name}: {len(missing)} of {len(df)} images missing (left out), "
                f"e.g. {list(missing[:3])} (folder(s) {folders[:3]})"
            )
            for p in missing:
                log.debug("%s: missing image %s", self.name, p)
        return df.loc[exists]


def _not_inside(name: str) -> bool:
    """``name`` is no file inside a folder: ``/x``, ``../x``, ``a/../..``, ``""``, or has a NUL."""
    norm = os.path.normpath(name)
    return "\x00" in name or os.path.isabs(norm) or norm == "." or norm.split(os.sep)[0] == ".."
