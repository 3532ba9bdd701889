"""Albumentations pipelines: random crop and flip for training, a deterministic resize for eval.

Albumentations draws its own random state (from OS entropy unless seeded), so the train
pipeline takes a seed, and ``iqs.data.dataset.seed_worker`` reseeds it in each loader worker.

Input size and normalisation are given by the model (see ``iqs.models.backbones``); nothing here
assumes a particular backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2

RESIZES = ("antialias", "area", "digikam")
DIGIKAM_SIZE = 299  # digiKam resizes every photo to 299x299, nearest neighbour


def train_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    scale: Sequence[float] = (0.6, 1.0),
    ratio: Sequence[float] = (0.9, 1.1),
    hflip: bool = True,
    seed: int | None = None,
    resize: str = "antialias",
    crop_from: int | None = None,
    normalize: bool = True,
) -> A.Compose:
    """Random resized crop (mild by default: strong zoom would hide or invent blur) and flip;
    with ``crop_from``, a resize to that square side and a random crop instead (the study's).

    ``resize="digikam"`` crops to 299 px with nearest neighbour, as digiKam resizes, then
    (bilinear, as the exported graph does) to ``size`` when that differs.
    """
    first = DIGIKAM_SIZE if resize == "digikam" else size
    if crop_from is not None:  # the study's: resize to 320 x 320, random crop 299
        crop: list[A.BasicTransform] = [_resize(crop_from, resize), A.RandomCrop(first, first)]
    else:
        random_crop = AntialiasedRandomResizedCrop if resize == "antialias" else A.RandomResizedCrop
        crop = [
            random_crop(
                size=(first, first),
                scale=tuple(scale),
                ratio=tuple(ratio),
                interpolation=_interpolation(resize),
            )
        ]
    ops: list[A.BasicTransform] = [*crop, *_to_model_size(size, resize)]
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    ops += [*_normalize(mean, std, resize, normalize), ToContiguousTensor()]
    return A.Compose(ops, seed=seed)


def eval_transform(
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    resize: str = "antialias",
    normalize: bool = True,
) -> A.Compose:
    """Deterministic resize of the whole photo: ``"antialias"`` (bilinear with antialiasing,
    see :func:`resize_antialiased`), ``"area"`` (OpenCV's area interpolation), or
    ``"digikam"``: exactly what digiKam feeds an exported model (see ``iqs.deploy``).

    Both pipelines end in a float tensor normalised by ``mean``/``std``; with
    ``normalize=False`` an ``antialias`` or ``area`` pipeline ends in uint8 pixels instead (4x
    less to move from loader workers and to the GPU) and :meth:`IQSDataModule.normalize`
    finishes on the device. ``digikam`` always normalises: it resizes in float."""
    first = DIGIKAM_SIZE if resize == "digikam" else size
    return A.Compose(
        [
            _resize(first, resize),
            *_to_model_size(size, resize),
            *_normalize(mean, std, resize, normalize),
            ToContiguousTensor(),
        ]
    )


def resize_antialiased(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``H x W x C`` image -> ``height x width x C``, bilinear with antialiasing (PyTorch's, as
    torchvision resizes tensors). Close to area interpolation when shrinking, and on uint8 ~3x
    faster than OpenCV's at the non-integer ratios a random resized crop makes (its fast path
    is for whole ratios): ~0.3 ms instead of ~0.8 ms of a 1024x768 photo's ~5 ms in a loader
    worker."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0)
    out = F.interpolate(pixels, size=(height, width), mode="bilinear", antialias=True)
    # The result is channels-first; OpenCV interleaves the planes ~10x faster than a strided copy.
    return cv2.merge(list(out[0].numpy())).reshape(height, width, -1)


class ToContiguousTensor(ToTensorV2):
    """``ToTensorV2`` with a contiguous ``C x H x W`` result. (``ToTensorV2`` returns a
    transposed view of the ``H x W x C`` array, which made every batch's ``torch.stack`` a strided
    copy: ~50 us per 224 px photo in a loader worker, ~15 us by OpenCV's ``split``.)"""

    def apply(self, img: np.ndarray, **params: Any) -> torch.Tensor:
        if img.ndim != 3:
            return super().apply(img, **params)
        return torch.from_numpy(np.stack(cv2.split(img)))


class AntialiasedResize(A.Resize):
    """``A.Resize`` by :func:`resize_antialiased`."""

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return resize_antialiased(img, self.height, self.width)


class AntialiasedRandomResizedCrop(A.RandomResizedCrop):
    """``A.RandomResizedCrop`` (same random crops) resized by :func:`resize_antialiased`."""

    def apply(
        self, img: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any
    ) -> np.ndarray:
        x_min, y_min, x_max, y_max = crop_coords
        return resize_antialiased(img[y_min:y_max, x_min:x_max], *self.size)


def _resize(side: int, resize: str) -> A.BasicTransform:
    if resize == "antialias":
        return AntialiasedResize(side, side)
    return A.Resize(side, side, interpolation=_interpolation(resize))


def _interpolation(resize: str) -> int:
    """OpenCV's interpolation of a resize mode (``antialias`` does not use OpenCV's)."""
    if resize not in RESIZES:
        raise ValueError(f"data.resize must be one of {RESIZES}, got {resize!r}")
    return cv2.INTER_NEAREST_EXACT if resize == "digikam" else cv2.INTER_AREA


def _to_model_size(size: int, resize: str) -> list[A.BasicTransform]:
    """digiKam mode continues in float, as the exported graph does after its [-1, 1] input."""
    if resize != "digikam":
        return []
    ops: list[A.BasicTransform] = [A.ToFloat(max_value=255.0)]
    if size != DIGIKAM_SIZE:
        ops.append(A.Resize(size, size, interpolation=cv2.INTER_LINEAR))
    return ops


def _normalize(
    mean: Sequence[float], std: Sequence[float], resize: str, normalize: bool
) -> list[A.BasicTransform]:
    if not normalize and resize != "digikam":
        return []
    scale = 1.0 if resize == "digikam" else 255.0  # already in [0, 1] after ToFloat
    return [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=scale)]
