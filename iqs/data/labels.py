"""The three pick-label classes and the rule that maps a normalised score to one of them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("rejected", "pending", "accepted")
NUM_CLASSES = len(CLASS_NAMES)

# digiKam's Xmp.digiKam.PickLabel value for each class index (0 means "no label").
PICK_LABEL = {0: 1, 1: 2, 2: 3}


class ScoreEdges:
    """Classify scores in [0, 1] (higher is better) by two ascending edges.

    ``score < edges[0]`` is Rejected, ``edges[0] <= score < edges[1]`` Pending, the rest Accepted.
    """

    def __init__(self, edges: Sequence[float]) -> None:
        edges = [float(e) for e in edges]
        if len(edges) != NUM_CLASSES - 1 or not edges[0] < edges[1]:
            raise ValueError(f"label edges must be two ascending numbers, got {edges}")
        self.edges = edges

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return np.digitize(np.asarray(scores, dtype=np.float64), self.edges).astype(np.int64)

    def __repr__(self) -> str:
        return f"ScoreEdges({self.edges})"
