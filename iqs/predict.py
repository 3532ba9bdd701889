"""`iqs-predict`: sort photos with a trained model; optionally write digiKam pick labels to XMP.

iqs-predict ~/Pictures/2026 --model iqs-digikam.onnx                 # -> predictions.csv
iqs-predict ~/Pictures/2026 --model best.ckpt --xmp --dry-run        # what would be written
iqs-predict a.jpg b.png --model best.ckpt --preprocess train --out labels.json

Folders are searched recursively. By default photos are preprocessed exactly as digiKam does
(299x299 nearest-neighbour, [-1, 1]), so the labels are the ones digiKam will show;
``--preprocess train`` uses the checkpoint's own evaluation transform instead. Unreadable files
are listed with the reason and never stop the run; photos themselves are never modified.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from iqs.data.images import UnreadableImage, read_rgb, reuse_freed_memory
from iqs.data.labels import CLASS_NAMES, PICK_LABEL
from iqs.data.transforms import eval_transform
from iqs.deploy import DeployedModel, digikam_preprocess
from iqs.models.backbones import input_config
from iqs.models.module import CheckpointError, load_checkpoint
from iqs.utils import atomic_write_text

log = logging.getLogger("iqs.predict")
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".heic", ".heif"}
FIELDS = ["path", "label", "pick_label", *(f"prob_{c}" for c in CLASS_NAMES), "score", "error",
          "xmp"]  # fmt: skip

Preprocess = Callable[[np.ndarray], np.ndarray]
Predict = Callable[[np.ndarray], np.ndarray]


def find_photos(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files given, plus photos under folders given (recursive, hidden folders skipped)."""
    found: list[Path] = []
    for p in map(Path, paths):
        p = p.expanduser()
        if p.is_dir():
            found += sorted(
                f for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in PHOTO_SUFFIXES
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
            )  # fmt: skip
        else:
            found.append(p)  # a missing file is reported per photo, like an unreadable one
    return list(dict.fromkeys(found))


class PhotoDataset(Dataset):
    """Photo files -> preprocessed arrays; an unreadable file yields its reason instead."""

    def __init__(self, paths: Sequence[Path], preprocess: Preprocess) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str]:
        try:
            return i, self.preprocess(read_rgb(self.paths[i])), ""
        except UnreadableImage as e:
            return i, None, e.reason


def _collate(items: list[tuple[int, np.ndarray | None, str]]) -> list:
    return items


class EvalPreprocess:
    """A checkpoint's evaluation transform, as a callable loader workers can unpickle (a local
    function cannot be sent to workers started with spawn, macOS' default)."""

    def __init__(self, transform: Callable) -> None:
        self.transform = transform

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self.transform(image=rgb)["image"].numpy()


def _init_worker(worker_id: int) -> None:
    _enable_heif()  # a spawned worker starts without the main process's plugins


def load_predictor(model_path: str | os.PathLike, preprocess: str) -> tuple[Preprocess, Predict]:
    """The preprocessing and the batch -> class probabilities function of a model file."""
    path = Path(model_path)
    if path.suffix.lower() == ".onnx":
        if preprocess != "digikam":
            raise ValueError(
                "an exported ONNX model takes digiKam's input: use --preprocess digikam"
            )
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return digikam_preprocess, lambda x: session.run(None, {"input": x})[0]
    model, cfg = load_checkpoint(path)
    inp = input_config(cfg.model.backbone, cfg.data.get("image_size"))
    if preprocess == "digikam":
        deployed = DeployedModel(model, inp.size, inp.mean, inp.std).eval()
        prep: Preprocess = digikam_preprocess
        net: Callable[[torch.Tensor], torch.Tensor] = deployed
    else:
        prep = EvalPreprocess(eval_transform(inp.size, inp.mean, inp.std,
                                             cfg.data.get("resize", "area")))  # fmt: skip
        net = model.predict_probs

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(x)).float().numpy()

    return prep, predict


def predict(
    photos: Sequence[Path],
    model_path: str | os.PathLike,
    preprocess: str = "digikam",
    batch_size: int = 16,
    workers: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One row per photo: label, probabilities and score, or the reason it could not be read."""
    prep, run = load_predictor(model_path, preprocess)
    loader = DataLoader(PhotoDataset(photos, prep), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate, worker_init_fn=_init_worker)  # fmt: skip
    rows: list[dict[str, Any]] = [{} for _ in photos]
    with tqdm(total=len(photos), desc="predict", unit="photo", disable=not progress) as bar:
        for items in loader:
            good = [(i, x) for i, x, _ in items if x is not None]
            for i, _, reason in items:
                if reason:
                    rows[i] = {"path": str(photos[i]), "error": reason}
            if good:
                probs = run(np.stack([x for _, x in good]).astype(np.float32))
                for (i, _), p in zip(good, probs):
                    label = int(p.argmax())
                    rows[i] = {
                        "path": str(photos[i]),
                        "label": CLASS_NAMES[label],
                        "pick_label": PICK_LABEL[label],
                        **{f"prob_{c}": float(v) for c, v in zip(CLASS_NAMES, p)},
                        "score": float(p @ np.arange(len(CLASS_NAMES))) / (len(CLASS_NAMES) - 1),
                        "error": "",
                    }
            bar.update(len(items))
    return rows


def write_sidecars(rows: list[dict[str, Any]], naming: str, dry_run: bool) -> int:
    """Pick label of each labelled photo into its XMP sidecar; failures go to ``xmp``.

    Returns the number of sidecars not written. Photos that would share one sidecar (``a.jpg``
    and ``a.png`` with "compatible" naming) are all refused: one label would overwrite another.
    """
    from iqs.xmp import XmpError, sidecar_path, write_pick_label

    labelled = [row for row in rows if not row.get("error")]
    sidecars = [sidecar_path(row["path"], naming) for row in labelled]
    owners: dict[Path, list[str]] = defaultdict(list)
    for row, sidecar in zip(labelled, sidecars):
        owners[sidecar].append(row["path"])
    failed = 0
    for row, sidecar in zip(labelled, sidecars):
        try:
            if len(owners[sidecar]) > 1:
                raise XmpError(
                    f"{sidecar} would be the sidecar of {' and '.join(owners[sidecar])}; "
                    "use --sidecar default"
                )
            result = write_pick_label(row["path"], row["pick_label"], naming, dry_run=dry_run)
            row["xmp"] = f"{'would be ' if dry_run else ''}{result.action}: {result.sidecar}"
        except Exception as e:  # one bad sidecar must not stop the others; it is reported
            row["xmp"] = f"{'would fail' if dry_run else 'failed'}: {e}"
            log.warning(
                "%s: sidecar %s: %s", row["path"], "would fail" if dry_run else "not written", e
            )
            failed += 1
    return failed


def save(rows: list[dict[str, Any]], out: str | os.PathLike) -> None:
    out = Path(out)
    if out.suffix.lower() == ".json":
        atomic_write_text(out, json.dumps(rows, indent=2))
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: row.get(k, "") for k in FIELDS} for row in rows)
    atomic_write_text(out, buf.getvalue())


def summary(rows: list[dict[str, Any]]) -> str:
    counts = Counter(row.get("label") or "unreadable" for row in rows)
    lines = [f"{name:>10}: {counts.get(name, 0)}" for name in (*CLASS_NAMES, "unreadable")]
    bad = [row for row in rows if row.get("error")]
    lines += [f"  {row['path']}: {row['error']}" for row in bad[:10]]
    if len(bad) > 10:
        lines.append(f"  ... and {len(bad) - 10} more (see the output file)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="iqs-predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", help="photos and folders (searched recursively)")
    parser.add_argument("--model", required=True, help="a checkpoint (.ckpt) or an exported .onnx")
    parser.add_argument("--out", default="predictions.csv", help="results: .csv or .json")
    parser.add_argument("--preprocess", choices=["digikam", "train"], default="digikam")
    parser.add_argument("--xmp", action="store_true", help="write pick labels to XMP sidecars")
    parser.add_argument(
        "--sidecar", choices=["default", "compatible"], default="default",
        help="photo.jpg.xmp (default) or photo.xmp (digiKam's compatible naming)",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="show what --xmp would write")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0, help="decoding processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    reuse_freed_memory()  # the model's process too, when workers decode
    _enable_heif()
    photos = find_photos(args.paths)
    if not photos:
        print("iqs-predict: no photos found", file=sys.stderr)
        return 1
    try:
        rows = predict(photos, args.model, args.preprocess, args.batch_size, args.workers)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"iqs-predict: {e}", file=sys.stderr)
        return 1
    failed = write_sidecars(rows, args.sidecar, args.dry_run) if args.xmp else 0
    save(rows, args.out)
    print(summary(rows))
    print(f"results: {args.out}")
    if args.xmp:
        for row in rows[:20] if args.dry_run else []:
            print(f"  {row.get('xmp') or row['path'] + ': ' + row['error']}")
    if failed:
        verb = "would not be" if args.dry_run else "not"
        print(f"iqs-predict: {failed} sidecar(s) {verb} written; the reasons are in the xmp "
              f"column of {args.out}", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _enable_heif() -> None:
    """HEIC/HEIF photos are read when the optional pillow-heif plugin is installed."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener()


if __name__ == "__main__":
    sys.exit(main())
