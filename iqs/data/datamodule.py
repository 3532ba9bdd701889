"""The LightningDataModule: sources -> one manifest -> leak-free splits -> loaders."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from iqs.data import manifest as mf
from iqs.data.dataset import EpochSampler, ManifestDataset, collate_skip_none, seed_worker
from iqs.data.images import ImageCache
from iqs.data.labels import CLASS_NAMES
from iqs.data.sources.base import Source
from iqs.data.splits import assign_group_splits
from iqs.data.transforms import eval_transform, train_transform
from iqs.distributed import is_rank_zero

log = logging.getLogger(__name__)


class IQSDataModule(pl.LightningDataModule):
    """Combines the manifests of several sources and serves train/val/test loaders.

    Args:
        sources: source name -> :class:`Source`; the names become per-source metric prefixes.
            Sources switched off (``enabled: false``) are left out.
        image_size: model input side; ``None`` means the backbone's own (set by the train entry).
        mean, std: normalisation of the backbone's pretrained configuration.
        split_fractions: train/val/test shares for rows whose source gives no split.
        seed: seed of that split.
        manifest_path: where the combined manifest of the run is saved (``None``: not saved).
        train_scale, train_ratio, hflip: random resized crop and flip settings for training.
        cache: ``{dir, max_side, quality}`` of the resize cache that sources with ``cache: true``
            read through (``None``: off).
        resize: ``antialias`` (bilinear with antialiasing: close to area interpolation,
            faster), ``area`` (OpenCV's area interpolation) or ``digikam`` (train and evaluate on
            what digiKam feeds an exported model: 299 px nearest neighbour, then the model's
            size).
        train_crop_from: resize training photos to this square side, then random-crop
            ``image_size`` (the study: 320 -> 299) instead of a random resized crop.
        decode_margin: photos read without the cache are decoded reduced (JPEG 1/2, 1/4,
            1/8) while both sides stay at least ``decode_margin x image_size``; ``None`` decodes
            full size. Not with ``resize=digikam``, which samples the full-size photo.
        labels: the label-rule preset (``conf/data/labels/``) the sources' rules come from;
            each source holds its own rule, this is kept for the record.
    """

    def __init__(
        self,
        sources: Mapping[str, Source],
        image_size: int | None = None,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int | str = 0,
        pin_memory: bool | str = False,
        persistent_workers: bool = False,
        split_fractions: Mapping[str, float] | None = None,
        seed: int = 0,
        manifest_path: str | os.PathLike | None = None,
        train_scale: Sequence[float] = (0.6, 1.0),
        train_ratio: Sequence[float] = (0.9, 1.1),
        hflip: bool = True,
        cache: Mapping[str, Any] | None = None,
        labels: Mapping[str, Any] | None = None,
        resize: str = "antialias",
        train_crop_from: int | None = None,
        decode_margin: float | None = 1.5,
    ) -> None:
        super().__init__()
        sources = {name: src for name, src in sources.items() if src.enabled}
        if not sources:
            raise ValueError("data.sources is empty (or all disabled): enable at least one source")
        for name, source in sources.items():
            source.name = name  # the mix's key is the name metrics and reports use
        if image_size is None:
            raise ValueError("image_size is not set: the train entry point takes it from the model")
        self.sources = dict(sources)
        self.image_size = int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self._num_workers = num_workers
        self._pin_memory = pin_memory
        self._persistent_workers = persistent_workers
        self.split_fractions = dict(split_fractions or {"train": 0.8, "val": 0.1, "test": 0.1})
        self.seed = seed
        self.manifest_path = Path(manifest_path) if manifest_path else None
        self.train_scale, self.train_ratio, self.hflip = train_scale, train_ratio, hflip
        self.image_cache = (
            ImageCache(cache["dir"], cache.get("max_side", 512), cache.get("quality", 95))
            if cache
            else None
        )
        self.label_presets = dict(labels or {})
        self.resize = resize
        self.train_crop_from = train_crop_from
        self.decode_min_side = (
            None
            if decode_margin is None or resize == "digikam"
            else math.ceil(decode_margin * max(self.image_size, train_crop_from or 0))
        )
        self.manifest: pd.DataFrame | None = None
        self.datasets: dict[str, ManifestDataset] = {}

    @property
    def source_names(self) -> list[str]:
        return list(self.sources)

    @property
    def cached_sources(self) -> list[str]:
        """Sources read through the image cache."""
        return [name for name, src in self.sources.items() if src.cache and self.image_cache]

    def prepare_data(self) -> None:
        for source in self.sources.values():
            source.prepare()

    def build_manifest(self) -> pd.DataFrame:
        """The combined, validated manifest with every row assigned to a split."""
        frames = []
        for name, source in self.sources.items():
            df = mf.validate(source.manifest(), where=f"source {name!r}")
            df["source"] = name
            if source.max_samples is not None and len(df) > source.max_samples:
                df = df.sample(n=source.max_samples, random_state=self.seed).sort_index()
            frames.append(df)
            self._report_problems(source)
        df = pd.concat(frames, ignore_index=True)
        df = mf.validate(df, where="combined manifest")
        fixed = pd.concat([s.official_splits() for s in self.sources.values()])
        fixed = fixed[~fixed.index.duplicated()]
        df = assign_group_splits(df, self.split_fractions, self.seed, fixed)
        mf.check_no_leak(df)
        return df

    def setup(self, stage: str | None = None) -> None:
        if self.manifest is not None:
            return
        self.manifest = self.build_manifest()
        if self.manifest_path is not None and is_rank_zero():  # before any trainer exists
            mf.save(self.manifest, self.manifest_path)
        log.info("data summary (rows per source x split x class):\n%s", self.summary())
        train_tf = train_transform(
            self.image_size,
            self.mean,
            self.std,
            self.train_scale,
            self.train_ratio,
            self.hflip,
            seed=self.seed,
            resize=self.resize,
            crop_from=self.train_crop_from,
            normalize=False,
        )
        eval_tf = eval_transform(self.image_size, self.mean, self.std, self.resize, False)
        for split in mf.SPLITS:
            rows = self.manifest[self.manifest["split"] == split]
            tf = train_tf if split == "train" else eval_tf
            self.datasets[split] = ManifestDataset(
                rows, self.source_names, tf, self.image_cache, self.cached_sources, self.seed,
                self.decode_min_side,
            )  # fmt: skip

    @staticmethod
    def _report_problems(source: Source, most: int = 10) -> None:
        for line in source.problems[:most]:
            log.warning("%s", line)
        if len(source.problems) > most:
            log.warning(
                "%s: %d more problem(s); `iqs-data check` lists them all",
                source.name,
                len(source.problems) - most,
            )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and batch.get("image") is not None:
            batch["image"] = self.normalize(batch["image"])
        return batch

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels from the loaders -> the model's normalised float input, on the batch's
        device (float batches, from ``resize=digikam``, are already normalised)."""
        if images.dtype != torch.uint8:
            return images
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1) * 255.0
        inv_std = 1.0 / (torch.tensor(self.std, device=images.device).view(1, -1, 1, 1) * 255.0)
        return (images.float() - mean) * inv_std

    def class_counts(self, split: str) -> torch.Tensor:
        """Rows per class in ``split`` (for class-weighted losses)."""
        self.setup()
        assert self.manifest is not None
        labels = self.manifest.loc[self.manifest["split"] == split, "label"]
        return torch.bincount(
            torch.as_tensor(labels.to_numpy(copy=True)), minlength=len(CLASS_NAMES)
        )

    def summary(self) -> pd.DataFrame:
        """Rows per source x split x class, with each cell's score range."""
        assert self.manifest is not None
        return summarize(self.manifest)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[split]
        if len(dataset) == 0:
            raise ValueError(f"the {split} split is empty: check data.split_fractions and sources")
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            sampler=self._train_sampler(split) if shuffle else self._eval_sampler(dataset),
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=self._persistent_workers and workers > 0,
            collate_fn=collate_skip_none,
            worker_init_fn=seed_worker if workers > 0 else None,
            drop_last=False,
            # Its own generator: making an iterator (which Lightning does at different moments on
            # a fresh and on a resumed run) must not draw from the global one dropout uses.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _train_sampler(self, split: str) -> EpochSampler:
        """Seeded per epoch; rows drawn by their source's ``weight`` unless all weights are 1."""
        assert self.manifest is not None
        weights = {name: src.weight for name, src in self.sources.items()}
        rows = self.manifest.loc[self.manifest["split"] == split, "source"].map(weights)
        replicas, rank = self._replicas()
        sampler = EpochSampler(
            len(rows),
            self.seed,
            None if all(w == 1.0 for w in weights.values()) else rows.to_numpy(),
            num_replicas=replicas,
            rank=rank,
        )
        # The loader is made once per fit, before Lightning first sets the epoch: a resumed
        # run must start from the epoch it resumes at.
        trainer = getattr(self, "trainer", None)
        sampler.set_epoch(trainer.current_epoch if trainer is not None else 0)
        return sampler

    @property
    def num_workers(self) -> int:
        """Loader processes; ``auto``: this process's share of the CPU cores it may use (all
        cores over the DDP processes of the machine), at most 8."""
        if self._num_workers != "auto":
            return int(self._num_workers)
        trainer = getattr(self, "trainer", None)
        per_machine = trainer.num_devices if trainer is not None else 1
        affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere all cores
        cores = len(affinity(0)) if affinity else (os.cpu_count() or 1)
        return max(0, min(8, cores // per_machine))

    @property
    def pin_memory(self) -> bool:
        """Page-locked batches (faster copies to a GPU); ``auto``: when a CUDA GPU exists."""
        if self._pin_memory == "auto":
            return torch.cuda.is_available()
        return bool(self._pin_memory)

    def _eval_sampler(self, dataset: ManifestDataset) -> UnrepeatedDistributedSampler | None:
        """Distributed: each process evaluates every n-th row, none twice (a padded sampler
        would count repeated rows in SRCC and F1); metrics gather them across processes."""
        replicas, rank = self._replicas()
        if replicas == 1:
            return None
        return UnrepeatedDistributedSampler(dataset, replicas, rank, shuffle=False)

    def _replicas(self) -> tuple[int, int]:
        """(world size, global rank) of the trainer's processes; (1, 0) without a trainer.
        The trainer runs with ``use_distributed_sampler=false``: these samplers split the data."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        if trainer.world_size > 1 and trainer._accelerator_connector.use_distributed_sampler:
            raise ValueError(
                "trainer.use_distributed_sampler must be false: iqs's samplers already split the "
                "data per process (conf/trainer/default.yaml sets it)"
            )
        return trainer.world_size, trainer.global_rank


def summarize(manifest: pd.DataFrame) -> pd.DataFrame:
    """Rows per source x split x class, and the score range of each source x split."""
    table = pd.crosstab(
        [manifest["source"], manifest["split"]],
        manifest["label"].map(dict(enumerate(CLASS_NAMES))),
    ).reindex(columns=list(CLASS_NAMES), fill_value=0)
    scores = manifest.groupby(["source", "split"])["score"]
    table["total"] = table.sum(axis=1)
    table["score_min"] = scores.min().round(3)
    table["score_max"] = scores.max().round(3)
    return table
