"""A map-style dataset over manifest rows, and a collate function that drops unreadable images."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, default_collate

from iqs.data.images import ImageCache, UnreadableImage, read_rgb

log = logging.getLogger(__name__)


class ManifestDataset(Dataset):
    """Rows of a manifest as ``{"image", "label", "score", "source"}`` samples.

    Columns are held as numpy arrays rather than a DataFrame so that worker processes share
    them cheaply. Images of the ``cached_sources`` (all sources when ``None``) are read through
    ``cache`` when one is given. An unreadable image yields
    ``None`` (skipped by :func:`collate_skip_none`) and a warning naming the file, instead of
    stopping the run.
    """

    def __init__(
        self,
        df: pd.DataFrame,
        source_names: Sequence[str],
        transform: Callable,
        cache: ImageCache | None = None,
        cached_sources: Sequence[str] | None = None,
    ) -> None:
        self.source_names = tuple(source_names)
        index = {name: i for i, name in enumerate(self.source_names)}
        self.paths = df["path"].to_numpy(dtype=object)
        self.image_ids = df["image_id"].to_numpy(dtype=object)
        self.labels = df["label"].to_numpy(dtype=np.int64)
        self.scores = df["score"].to_numpy(dtype=np.float32)
        # Row -> index into source_names (the name is the cache folder, the index the label).
        self.sources = df["source"].map(index).to_numpy(dtype=np.int64)
        self.transform = transform
        self.cache = cache
        cached = set(self.source_names if cached_sources is None else cached_sources)
        self.use_cache = np.array([cache is not None and n in cached for n in self.source_names])
        self._warned: set[str] = set()  # per process: every worker holds its own copy

    def __len__(self) -> int:
        return len(self.paths)

    def source_name(self, i: int) -> str:
        return self.source_names[self.sources[i]]

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        path = self.paths[i]
        try:
            if self.use_cache[self.sources[i]]:
                assert self.cache is not None
                rgb = self.cache.read(path, self.source_name(i), self.image_ids[i])
            else:
                rgb = read_rgb(path)
        except UnreadableImage as e:
            if path not in self._warned:
                self._warned.add(path)
                log.warning("skipping %s", e)
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
    """Collate the readable samples; ``"skipped"`` counts the unreadable ones (``None``).

    A batch of only unreadable samples is ``None``.
    """
    kept = [b for b in batch if b is not None]
    if not kept:
        return None
    collated = default_collate(kept)
    collated["skipped"] = torch.tensor(len(batch) - len(kept))
    return collated
