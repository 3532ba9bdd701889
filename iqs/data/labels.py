"""The three pick-label classes and the rules that turn a score into one of them."""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("rejected", "pending", "accepted")
NUM_CLASSES = len(CLASS_NAMES)
# Label value of a row a rule leaves out; such rows are removed from the manifest.
DROP = -1

# digiKam's Xmp.digiKam.PickLabel value for each class index (0 means "no label").
PICK_LABEL = {0: 1, 1: 2, 2: 3}

_BOUNDS = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}


def class_index(label: str | int) -> int:
    """``"pending"``, ``1`` or ``"drop"`` -> the class index (``DROP`` for ``"drop"``)."""
    if isinstance(label, str):
        key = label.strip().lower()
        if key == "drop":
            return DROP
        if key in CLASS_NAMES:
            return CLASS_NAMES.index(key)
        if key.lstrip("-").isdigit():
            label = int(key)
        else:
            raise ValueError(f"unknown label {label!r}; use one of {[*CLASS_NAMES, 'drop']}")
    if int(label) == DROP or 0 <= int(label) < NUM_CLASSES:
        return int(label)
    raise ValueError(f"label {label} out of range 0..{NUM_CLASSES - 1}")


class LabelRule:
    """Maps a source's own score (on its documented scale) to a class by ordered bands.

    Each band is ``{label: <class or "drop">, gt|ge|lt|le: <bound>, ...}``; a score belongs to
    the band whose bounds all hold. Scores in no band get ``otherwise`` (a class or ``"drop"``).
    A score in two bands is a configuration error. Example, the study's AVA rule::

        bands: [{le: 4, label: rejected}, {gt: 4, le: 5, label: pending},
                {gt: 5, lt: 6, label: drop}, {ge: 6, label: accepted}]
    """

    def __init__(self, bands: Sequence[Mapping[str, Any]], otherwise: str | int = "drop") -> None:
        self.bands: list[tuple[int, dict[str, float]]] = []
        for i, band in enumerate(bands):
            band = dict(band)
            if "label" not in band:
                raise ValueError(f"label rule band {i} {band} has no 'label'")
            label = class_index(band.pop("label"))
            unknown = set(band) - set(_BOUNDS)
            if unknown:
                raise ValueError(f"label rule band {i}: unknown key(s) {sorted(unknown)}")
            self.bands.append((label, {k: float(v) for k, v in band.items()}))
        self.otherwise = class_index(otherwise)

    @classmethod
    def from_edges(cls, edges: Sequence[float]) -> LabelRule:
        """``score < edges[0]`` rejected, ``< edges[1]`` pending, the rest accepted."""
        lo, hi = (float(e) for e in edges)
        if not lo < hi:
            raise ValueError(f"label edges must be two ascending numbers, got {list(edges)}")
        return cls(
            [
                {"lt": lo, "label": "rejected"},
                {"ge": lo, "lt": hi, "label": "pending"},
                {"ge": hi, "label": "accepted"},
            ]
        )

    @classmethod
    def from_config(cls, cfg: LabelRule | Mapping[str, Any] | Sequence[float]) -> LabelRule:
        """A rule from its configuration: ``{bands, otherwise}`` or two score edges."""
        if isinstance(cfg, LabelRule):
            return cfg
        if isinstance(cfg, Mapping):
            return cls(cfg.get("bands", ()), cfg.get("otherwise", "drop"))
        return cls.from_edges(cfg)

    def __call__(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """Class index per score, ``DROP`` for rows to leave out."""
        scores = np.asarray(scores, dtype=np.float64)
        labels = np.full(scores.shape, self.otherwise, dtype=np.int64)
        matched = np.zeros(scores.shape, dtype=np.int64)
        for label, bounds in self.bands:
            inside = np.ones(scores.shape, dtype=bool)
            for key, bound in bounds.items():
                inside &= _BOUNDS[key](scores, bound)
            labels[inside] = label
            matched += inside
        overlap = np.flatnonzero(matched > 1)
        if len(overlap):
            raise ValueError(f"{self}: score {scores[overlap[0]]} falls in more than one band")
        return labels

    def __repr__(self) -> str:
        names = [*CLASS_NAMES]

        def name(label: int) -> str:
            return "drop" if label == DROP else names[label]

        bands = ", ".join(
            " and ".join(f"{k} {v:g}" for k, v in b.items()) + f" -> {name(lbl)}"
            for lbl, b in self.bands
        )
        return f"LabelRule({bands}; otherwise -> {name(self.otherwise)})"
