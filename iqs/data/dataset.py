"""A map-style dataset over manifest rows, and a collate function that drops unreadable images."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, default_collate

log = logging.getLogger(__name__)


def read_rgb(path: str) -> np.ndarray | None:
    """Decode an image file to an RGB uint8 array, or ``None`` when it cannot be decoded."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class ManifestDataset(Dataset):
    """Rows of a manifest as ``{"image", "label", "score", "source"}`` samples.

    Columns are held as numpy arrays rather than a DataFrame so that worker processes share
    them cheaply. An unreadable image yields ``None`` (skipped by :func:`collate_skip_none`) and a
    warning naming the file, instead of stopping the run.
    """

    def __init__(self, df: pd.DataFrame, source_names: Sequence[str], transform: Callable) -> None:
        index = {name: i for i, name in enumerate(source_names)}
        self.paths = df["path"].to_numpy(dtype=object)
        self.labels = df["label"].to_numpy(dtype=np.int64)
        self.scores = df["score"].to_numpy(dtype=np.float32)
        self.sources = df["source"].map(index).to_numpy(dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        rgb = read_rgb(self.paths[i])
        if rgb is None:
            log.warning("skipping unreadable image %s", self.paths[i])
            return None
        return {
            "image": self.transform(image=rgb)["image"],
            "label": torch.tensor(self.labels[i]),
            "score": torch.tensor(self.scores[i]),
            "source": torch.tensor(self.sources[i]),
        }


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed the worker's augmentation stream from the worker's
    torch seed (itself derived from the global seed, the worker id and the epoch)."""
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset.transform, "set_random_seed"):
        info.dataset.transform.set_random_seed(torch.initial_seed() % 2**32)


def collate_skip_none(batch: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    kept = [b for b in batch if b is not None]
    return default_collate(kept) if kept else None
