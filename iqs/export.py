"""`iqs-export`: a checkpoint -> an ONNX model digiKam can load, with a model card, self-checked.

iqs-export outputs/train/runs/<...>/checkpoints/epoch_007.ckpt --out iqs-digikam.onnx
iqs-export last.ckpt --out model.onnx --check-photos ~/Pictures/samples

The model takes digiKam's input (RGB, 299x299 nearest-neighbour resize, pixels in [-1, 1], NCHW)
and outputs the 3 class probabilities (arg-max: 0 Rejected, 1 Pending, 2 Accepted). Before the
file is put in place, ONNX Runtime and OpenCV's DNN module must give the same classes as PyTorch
(and probabilities within ``--tolerance``) on sample photos; otherwise nothing is written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
import torch

import iqs
from iqs.data.images import UnreadableImage, read_rgb
from iqs.data.labels import CLASS_NAMES, PICK_LABEL
from iqs.deploy import DIGIKAM_SIZE, DeployedModel, digikam_preprocess
from iqs.models.backbones import input_config
from iqs.models.module import CheckpointError, load_checkpoint
from iqs.utils import atomic_write_text, temp_beside

log = logging.getLogger("iqs.export")
OPSET = 17
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp"}


class ExportError(RuntimeError):
    """The exported model does not behave like the checkpoint; nothing was written."""


def deployed_model(ckpt: str | os.PathLike) -> tuple[DeployedModel, dict[str, Any]]:
    """The checkpoint wrapped to digiKam's contract, and its run config."""
    model, cfg = load_checkpoint(ckpt)
    inp = input_config(cfg.model.backbone, cfg.data.get("image_size"))
    return DeployedModel(model, inp.size, inp.mean, inp.std).eval(), model.run_config or {}


def export_onnx(model: DeployedModel, path: str | os.PathLike, opset: int = OPSET) -> None:
    """Write the ONNX graph (batch axis dynamic; digiKam feeds one photo at a time).

    The TorchScript-based exporter is used on purpose: with the torch.export-based one (the
    default since PyTorch 2.9) OpenCV's DNN module disagreed with PyTorch by 0.2 in probability
    on a resize, while this graph matches both ONNX Runtime and OpenCV to 1e-6.
    """
    dummy = torch.zeros(1, 3, model.size, model.size)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=["input"],
            output_names=["probs"],
            dynamic_axes={"input": {0: "batch"}, "probs": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )


def sample_photos(
    folder: str | os.PathLike | None, limit: int = 16
) -> list[tuple[str, np.ndarray]]:
    """Photos to check the export on: a folder's, or the built-in ones (no download)."""
    if folder is None:
        from iqs.data.sources.synthetic import BUILTIN_PHOTOS, builtin_photo_loaders

        loaders = builtin_photo_loaders()
        return [(name, loaders[name]()) for name in BUILTIN_PHOTOS]
    photos = []
    for path in sorted(Path(folder).expanduser().rglob("*")):
        if path.suffix.lower() in PHOTO_SUFFIXES:
            try:
                photos.append((str(path), read_rgb(path)))
            except UnreadableImage as e:
                log.warning("not used for the check: %s", e)
        if len(photos) >= limit:
            break
    if not photos:
        raise ExportError(f"no readable photos in {folder} to check the export on")
    return photos


def verify(
    model: DeployedModel, onnx_path: str | os.PathLike, photos: Sequence[tuple[str, np.ndarray]],
    tolerance: float,
) -> dict[str, Any]:  # fmt: skip
    """PyTorch vs ONNX Runtime vs OpenCV DNN on the same digiKam-preprocessed photos."""
    blobs = np.stack([digikam_preprocess(rgb) for _, rgb in photos])
    with torch.no_grad():
        reference = model(torch.from_numpy(blobs)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    runtimes = {"onnxruntime": session.run(None, {"input": blobs})[0]}
    net = cv2.dnn.readNetFromONNX(str(onnx_path))
    opencv = []
    for blob in blobs:  # as digiKam runs it: one blob at a time
        net.setInput(blob[None])
        opencv.append(net.forward()[0])
    runtimes["opencv_dnn"] = np.stack(opencv)
    report: dict[str, Any] = {"photos": len(photos), "tolerance": tolerance}
    for name, probs in runtimes.items():
        diff = float(np.abs(probs - reference).max())
        same = bool((probs.argmax(1) == reference.argmax(1)).all())
        report[name] = {"max_abs_diff": diff, "same_classes": same}
        if not same or diff > tolerance:
            raise ExportError(
                f"{name} disagrees with PyTorch on the sample photos (max |diff| {diff:.2e}, "
                f"same classes: {same}); the model was not written"
            )
    return report


def model_card(
    onnx_path: Path, ckpt: str | os.PathLike, run_config: dict[str, Any], check: dict[str, Any]
) -> dict[str, Any]:
    metrics_file = Path(ckpt).resolve().parent.parent / "test_metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    return {
        "format": "onnx",
        "opset": OPSET,
        "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "classes": {str(i): name for i, name in enumerate(CLASS_NAMES)},
        "digikam_pick_label": {name: PICK_LABEL[i] for i, name in enumerate(CLASS_NAMES)},
        "input": {
            "name": "input",
            "layout": "NCHW",
            "channels": "RGB",
            "size": [DIGIKAM_SIZE, DIGIKAM_SIZE],
            "resize": "nearest neighbour (cv2.INTER_NEAREST_EXACT)",
            "scaling": "x / 127.5 - 1 (pixels in [-1, 1])",
        },
        "output": {"name": "probs", "meaning": "class probabilities; arg-max is the class"},
        "checkpoint": str(Path(ckpt).resolve()),
        "test_metrics": metrics,
        "verification": check,
        "training_config": run_config,
        "iqs_version": iqs.__version__,
        "torch_version": torch.__version__,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def export(
    ckpt: str | os.PathLike,
    out: str | os.PathLike,
    check_photos: str | os.PathLike | None = None,
    tolerance: float = 1e-4,
) -> dict[str, Any]:
    """Export, verify, then put the model and its card (``<out>.json``) in place atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model, run_config = deployed_model(ckpt)
    tmp = temp_beside(out)  # torch.onnx.export writes to a path, so not atomic_write
    try:
        export_onnx(model, tmp)
        check = verify(model, tmp, sample_photos(check_photos), tolerance)
        card = model_card(tmp, ckpt, run_config, check)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    atomic_write_text(out.with_suffix(".json"), json.dumps(card, indent=2, default=str))
    return card


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="iqs-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="an iqs checkpoint (.ckpt)")
    parser.add_argument("--out", default="iqs-digikam.onnx", help="the ONNX file to write")
    parser.add_argument(
        "--check-photos", default=None, help="folder of photos to verify on (default: built-in)"
    )
    parser.add_argument("--tolerance", type=float, default=1e-4, help="max probability difference")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    try:
        card = export(args.checkpoint, args.out, args.check_photos, args.tolerance)
    except (CheckpointError, ExportError) as e:
        print(f"iqs-export: {e}", file=sys.stderr)
        return 1
    check, card_path = card["verification"], Path(args.out).with_suffix(".json")
    print(
        f"wrote {args.out} (sha256 {card['sha256'][:12]}...) and {card_path}"
        f"\nverified on {check['photos']} photos: ONNX Runtime max |diff| "
        f"{check['onnxruntime']['max_abs_diff']:.1e}, OpenCV DNN max |diff| "
        f"{check['opencv_dnn']['max_abs_diff']:.1e}, same classes as PyTorch"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
