"""A map-style dataset over manifest rows, its training sampler, and a collate function that
drops unreadable images.

Training randomness is a pure function of (seed, epoch, row): :class:`EpochSampler` draws each
epoch's order from ``seed`` and the epoch and hands the epoch to the dataset with every index,
which seeds that sample's augmentation from them. So a run resumed from a checkpoint sees the
same batches and crops as one never interrupted, whatever the number of loader workers.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from iqs.data.images import ImageCache, UnreadableImage, read_rgb

log = logging.getLogger(__name__)


class ManifestDataset(Dataset):
    """Rows of a manifest as ``{"image", "label", "score", "source"}`` samples.

    Columns are held as numpy arrays rather than a DataFrame so that worker processes share
    them cheaply. Images of the ``cached_sources`` (all sources when ``None``) are read through
    ``cache`` when one is given; the others are decoded reduced down to ``decode_min_side``
    when it is set (see :func:`iqs.data.images.read_rgb`). An unreadable image yields
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
        seed: int = 0,
        decode_min_side: int | None = None,
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
        self.seed = int(seed)
        self.decode_min_side = decode_min_side
        self._warned: set[str] = set()  # per process: every worker holds its own copy

    def __len__(self) -> int:
        return len(self.paths)

    def source_name(self, i: int) -> str:
        return self.source_names[self.sources[i]]

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any] | None:
        """``index`` is a row, or ``(row, epoch)`` from :class:`EpochSampler`."""
        i, epoch = index if isinstance(index, tuple) else (index, None)
        if epoch is not None:
            reseed(self.transform, _mix(self.seed, epoch, i))
        path = self.paths[i]
        try:
            if self.use_cache[self.sources[i]]:
                assert self.cache is not None
                rgb = self.cache.read(path, self.source_name(i), self.image_ids[i])
            else:
                rgb = read_rgb(path, min_side=self.decode_min_side)
        except UnreadableImage as e:
            if path not in self._warned:
                self._warned.add(path)
                log.warning("skipping %s", e)
            return None
        return {
            "image": self.transform(image=rgb)["image"],
            "label": self.labels[i],  # numpy scalars: collated to tensors, one per batch
            "score": self.scores[i],
            "source": self.sources[i],
        }


class EpochSampler(Sampler):
    """Each epoch a seeded order of the rows (a permutation, or draws with replacement by
    ``weights``), as ``(row, epoch)`` pairs. Lightning calls :meth:`set_epoch`.

    In a distributed run every process draws the same order and takes every
    ``num_replicas``-th row from ``rank`` on; the order is padded by repeating its head so that
    all processes run the same number of batches (DDP synchronises every step).
    """

    def __init__(
        self,
        n: int,
        seed: int,
        weights: Sequence[float] | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.n = int(n)
        self.seed = int(seed)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.n // self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        # A generator: the order is drawn at the first ``next``, after Lightning's set_epoch.
        epoch = self.epoch
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
        if self.weights is None:
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=generator)
        order = order.tolist()
        if self.num_replicas > 1:
            total = len(self) * self.num_replicas
            padded = (order * -(-total // max(len(order), 1)))[:total]
            order = padded[self.rank :: self.num_replicas]
        for i in order:
            yield i, epoch


def _mix(*values: int) -> int:
    """A 32-bit seed from several integers (numpy's SeedSequence mixes them well)."""
    return int(np.random.SeedSequence([v % 2**32 for v in values]).generate_state(1)[0])


def reseed(transform: Callable, seed: int) -> None:
    """Seed an albumentations pipeline with one numpy and one Python generator that all its
    transforms draw from in turn. (``Compose.set_random_seed`` gives each transform its own
    generators with the same seed, so their draws repeat each other: the flip was decided by
    the number that also sized the crop, and flipped crops were smaller.)"""
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed the worker's augmentation stream from the worker's
    torch seed (itself derived from the global seed, the worker id and the epoch)."""
    info = torch.utils.data.get_worker_info()
    if info is not None:
        reseed(info.dataset.transform, torch.initial_seed() % 2**32)


def collate_skip_none(batch: list[dict[str, Any] | None]) -> Batch:
    """Collate the readable samples; ``"skipped"`` counts the unreadable ones (``None``).

    ``default_collate`` stacks the images (into shared memory in a loader worker) and makes the
    per-sample numbers (numpy scalars: label, score, source) tensors in ordinary memory, which
    :class:`Batch` sends to the main process by value. A batch of only unreadable samples
    holds only ``"skipped"``.
    """
    kept = [b for b in batch if b is not None]
    if not kept:
        return Batch(skipped=torch.tensor(len(batch)))
    collated = Batch(default_collate(kept))
    collated["skipped"] = torch.tensor(len(batch) - len(kept))
    return collated


class Batch(dict):
    """A collated batch: a dict that a loader worker hands to the main process with its small
    tensors (up to :attr:`BY_VALUE_BYTES`) pickled by value.

    PyTorch passes every tensor between processes as a shared-memory file of its own, its
    descriptor fetched through a socket from the worker: for the four per-sample number fields
    of a batch of 16 that cost 1.5-4% of a 2-worker loader's throughput on 1024x768 photos.
    Only inter-process pickling changes (a reducer registered with ``ForkingPickler``, as
    PyTorch registers its own); the main process receives a plain ``dict`` of the same tensors.
    """

    BY_VALUE_BYTES = 64 << 10


def _reduce_batch(batch: Batch) -> tuple[Callable, tuple[list[str], dict, dict]]:
    small = {
        key: value.numpy()
        for key, value in batch.items()
        if isinstance(value, torch.Tensor)
        and value.device.type == "cpu"
        and not value.requires_grad
        and value.nbytes <= Batch.BY_VALUE_BYTES
    }
    others = {key: value for key, value in batch.items() if key not in small}
    return _rebuild_batch, (list(batch), small, others)


def _rebuild_batch(keys: list[str], small: dict[str, np.ndarray], others: dict) -> dict:
    return {key: torch.from_numpy(small[key]) if key in small else others[key] for key in keys}


ForkingPickler.register(Batch, _reduce_batch)
