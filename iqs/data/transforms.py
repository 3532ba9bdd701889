"""Albumentations pipelines: random crop and flip for training, a deterministic resize for eval.

Albumentations draws its own random state (from OS entropy unless seeded), so the train
pipeline takes a seed, and ``iqs.data.dataset.seed_worker`` reseeds it in each loader worker.

Input size and normalisation are given by the model (see ``iqs.models.backbones``); nothing here
assumes a particular backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2


def train_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    scale: Sequence[float] = (0.6, 1.0),
    ratio: Sequence[float] = (0.9, 1.1),
    hflip: bool = True,
    seed: int | None = None,
) -> A.Compose:
    """Random resized crop (mild by default: strong zoom would hide or invent blur) and flip."""
    ops: list[A.BasicTransform] = [
        A.RandomResizedCrop(
            size=(size, size), scale=tuple(scale), ratio=tuple(ratio), interpolation=cv2.INTER_AREA
        )
    ]
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    ops += [A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()]
    return A.Compose(ops, seed=seed)


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    return A.Compose(
        [
            A.Resize(size, size, interpolation=cv2.INTER_AREA),
            A.Normalize(mean=tuple(mean), std=tuple(std)),
            ToTensorV2(),
        ]
    )
