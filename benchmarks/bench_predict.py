"""Predict throughput: PyTorch eager vs ONNX Runtime, same photos, same model, same batches.

Builds a model of the default backbone (random weights: speed does not depend on them), exports
it with `iqs.export` (digiKam's 299 px input), then times the batch -> class probabilities step
on the same preprocessed photos with each runtime, after a warm-up. Decoding is left out: it is
the same for both (see bench_image_cache.py for decoding).
Run: ``python benchmarks/bench_predict.py [--backbone resnet18] [--batch 16]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import skimage.data
import torch
from hydra import compose, initialize_config_dir

from iqs.deploy import DeployedModel, digikam_preprocess
from iqs.export import export_onnx
from iqs.models.backbones import input_config
from iqs.models.module import build_model
from iqs.train import CONFIG_DIR


def best_of(fn, batches: list[np.ndarray], repeats: int) -> float:
    """Seconds for one pass over ``batches``, the best of ``repeats`` (after one warm-up)."""
    fn(batches[0])
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for b in batches:
            fn(b)
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="mobilenetv3_small_100")
    parser.add_argument(
        "--image-size", type=int, default=None, help="model input (default: its own)"
    )
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"model.backbone.name={args.backbone}",
                                          "paths.root_dir=.", "paths.output_dir=."])  # fmt: skip
    model = build_model(cfg, ["data"]).eval()
    inp = input_config(args.backbone, args.image_size)
    deployed = DeployedModel(model, inp.size, inp.mean, inp.std).eval()
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    blobs = np.stack([digikam_preprocess(photos[i % 3]) for i in range(args.photos)])
    batches = [blobs[i : i + args.batch] for i in range(0, len(blobs), args.batch)]

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return deployed(torch.from_numpy(x)).numpy()

    # Eager first: ONNX Runtime's worker threads keep spinning after a run and would slow it.
    t_eager = best_of(eager, batches, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(deployed, path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def onnx(x: np.ndarray) -> np.ndarray:
            return session.run(None, {"input": x})[0]

        np.testing.assert_allclose(eager(batches[0]), onnx(batches[0]), atol=1e-4)
        t_onnx = best_of(onnx, batches, args.repeats)
    n = len(blobs)
    print(f"{args.backbone} at {inp.size} px (digiKam input 299), batch {args.batch}, "
          f"{torch.get_num_threads()} threads, {n} photos")  # fmt: skip
    print(f"{'PyTorch eager':16s} {n / t_eager:8.1f} images/s")
    print(f"{'ONNX Runtime':16s} {n / t_onnx:8.1f} images/s")
    print(f"ONNX Runtime / eager: {t_eager / t_onnx:.2f}x")


if __name__ == "__main__":
    main()
