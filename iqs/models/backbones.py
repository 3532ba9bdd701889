"""Backbones come from timm's registry; weights from the hub or from a local file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
from torch import nn


class BackboneError(RuntimeError):
    """A backbone or its weights cannot be loaded; the message says how to fix it."""


@dataclass(frozen=True)
class InputConfig:
    """What the model expects: square side in pixels and normalisation."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def create_backbone(
    name: str, pretrained: bool = False, weights: str | os.PathLike | None = None, **kwargs: Any
) -> nn.Module:
    """A timm model without classifier (``num_classes=0``), returning pooled features.

    ``weights`` is a local checkpoint file (timm ``.pth``/``.bin``/``.safetensors`` state dict);
    it wins over ``pretrained``, which downloads ImageNet weights from the hub. Other keyword
    arguments go to ``timm.create_model`` (e.g. ``dynamic_img_size`` for ViTs).
    """
    if not timm.is_model(name.split(".")[0]):
        raise BackboneError(f"unknown timm backbone {name!r}; see timm.list_models()")
    kwargs["num_classes"] = 0
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneError(f"model.backbone.weights: no such file {path}")
        pretrained = True
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as err:  # hub errors come in many types (HTTP, offline, missing cache)
        if not pretrained or weights is not None:
            raise
        raise BackboneError(
            f"could not download pretrained weights for {name!r} ({type(err).__name__}: {err}). "
            "Without network, pass a local file with model.backbone.weights=/path/to/weights "
            "or train from scratch with model.backbone.pretrained=false"
        ) from err


def input_config(name: str, size: int | None = None) -> InputConfig:
    """Input side and normalisation from the backbone's pretrained config; ``size`` overrides
    the side (e.g. smaller inputs for CPU training)."""
    cfg = timm.get_pretrained_cfg(name)
    if cfg is None:
        raise BackboneError(f"timm has no pretrained config for {name!r}")
    return InputConfig(
        size=int(size) if size else int(cfg.input_size[-1]),
        mean=tuple(float(m) for m in cfg.mean),  # type: ignore[arg-type]
        std=tuple(float(s) for s in cfg.std),  # type: ignore[arg-type]
    )
