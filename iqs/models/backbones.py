"""Backbones come from timm's registry; weights from the hub or from a local file.

A backbone config that is not timm's (``model=classic``) states its own input side and
normalisation (``input_size``, ``mean``, ``std``); ``input_config`` reads them from it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
from timm.models import load_state_dict
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
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as err:  # hub errors come in many types (HTTP, offline, missing cache)
        if weights is not None:  # shapes that do not fit, an unreadable file
            raise BackboneError(
                f"model.backbone.weights: {weights} does not fit {name!r}: "
                f"{str(err).strip().splitlines()[0]}... give a timm state dict of this model"
            ) from err
        if not pretrained:
            raise
        raise BackboneError(
            f"could not download pretrained weights for {name!r} ({type(err).__name__}: {err}). "
            "Without network, pass a local file with model.backbone.weights=/path/to/weights "
            "or train from scratch with model.backbone.pretrained=false"
        ) from err
    if weights is not None:
        _require_every_weight(model, Path(weights).expanduser(), name)
    return model


def _require_every_weight(model: nn.Module, path: Path, name: str) -> None:
    """timm loads a local file leniently once the classifier is dropped (``num_classes=0``):
    a file of another model, or with prefixed keys, would leave weights random in silence."""
    found = set(load_state_dict(str(path), weights_only=True))
    missing = [k for k in model.state_dict() if k not in found]
    if missing:
        raise BackboneError(
            f"model.backbone.weights: {path} lacks {len(missing)} of the {len(model.state_dict())} "
            f"weights of {name!r} (e.g. {missing[:3]}; the file has e.g. {sorted(found)[:3]}); "
            "give a timm state dict of this model"
        )


def input_config(backbone: str | Mapping[str, Any], size: int | None = None) -> InputConfig:
    """Input side and normalisation of a backbone; ``size`` overrides the side (e.g. smaller
    inputs for CPU training).

    ``backbone`` is a timm name, or a backbone config (``cfg.model.backbone``): one that sets its
    own ``mean`` and ``std`` (and ``input_size``) is taken as is, else its ``name`` is looked up
    in timm's pretrained configs.
    """
    if isinstance(backbone, Mapping):
        if backbone.get("mean") is not None and backbone.get("std") is not None:
            side = size or backbone.get("input_size")
            if not side:
                raise BackboneError("a backbone config with mean/std also needs input_size")
            return InputConfig(
                size=int(side),
                mean=tuple(float(m) for m in backbone["mean"]),  # type: ignore[arg-type]
                std=tuple(float(s) for s in backbone["std"]),  # type: ignore[arg-type]
            )
        backbone = str(backbone["name"])
    cfg = timm.get_pretrained_cfg(backbone)
    if cfg is None:
        raise BackboneError(f"timm has no pretrained config for {backbone!r}")
    return InputConfig(
        size=int(size) if size else int(cfg.input_size[-1]),
        mean=tuple(float(m) for m in cfg.mean),  # type: ignore[arg-type]
        std=tuple(float(s) for s in cfg.std),  # type: ignore[arg-type]
    )
