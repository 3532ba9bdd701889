"""How much the on-disk resize cache speeds up epochs over large JPEGs.

    python benchmarks/bench_image_cache.py [--n 48] [--size 4000x3000] [--side 512]

Writes N phone-sized JPEGs to a temporary folder, then times two epochs of what training does
without a cache (decode the full photo, resize to the model input) and two epochs through
:class:`iqs.data.images.ImageCache` (the first fills it, the second reads the small copies).
Both run in this process on the same files, so the ratios compare like with like; the files are
in the page cache after being written, so this measures decoding, not disk reads.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import skimage.data

from iqs.data.images import ImageCache, read_rgb

MODEL_SIDE = 299  # the input side of an Inception-style backbone


def make_photos(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """N distinct JPEGs of an upscaled natural photo with sensor-like noise, so that they
    compress like real photos (a few MB each) rather than like flat synthetic images."""
    rng = np.random.default_rng(seed)
    bgr = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    base = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 6, size=(height, width, 1)).astype(np.int16)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        shifted = np.roll(noise, (int(rng.integers(height)), int(rng.integers(width))), (0, 1))
        image = np.clip(base[:, :: 1 if i % 2 else -1] + shifted, 0, 255).astype(np.uint8)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok
        paths.append(folder / f"IMG_{i:04d}.jpg")
        paths[-1].write_bytes(data.tobytes())
    return paths


def to_model_input(rgb: np.ndarray) -> np.ndarray:
    return cv2.resize(rgb, (MODEL_SIDE, MODEL_SIDE), interpolation=cv2.INTER_AREA)


def timed(read: Callable[[Path], np.ndarray], paths: list[Path]) -> float:
    start = time.perf_counter()
    for p in paths:
        to_model_input(read(p))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="number of photos (default 48)")
    parser.add_argument("--size", default="4000x3000", help="photo size WxH (default 4000x3000)")
    parser.add_argument("--side", type=int, default=512, help="cache max_side (default 512)")
    args = parser.parse_args()
    width, height = map(int, args.size.lower().split("x"))

    with tempfile.TemporaryDirectory(prefix="iqs-bench-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        paths = make_photos(folder / "photos", args.n, width, height) if args.n else []
        megabytes = sum(p.stat().st_size for p in paths) / 2**20
        print(
            f"{args.n} JPEGs of {width}x{height} ({megabytes / max(args.n, 1):.1f} MB each) "
            f"written in {time.perf_counter() - start:.1f} s"
        )

        cache = ImageCache(folder / "cache", max_side=args.side)
        rows = {p: ("bench", f"bench:{p.name}") for p in paths}
        results = {
            "uncached epoch 1": timed(read_rgb, paths),
            "uncached epoch 2": timed(read_rgb, paths),
            f"cached epoch 1 (fills {args.side}px)": timed(
                lambda p: cache.read(p, *rows[p]), paths
            ),
            f"cached epoch 2 (reads {args.side}px)": timed(
                lambda p: cache.read(p, *rows[p]), paths
            ),
            f"draft decode, no cache (max_side={args.side})": timed(
                lambda p: read_rgb(p, args.side), paths
            ),
        }

    print(f"\n{'':38s} {'seconds':>8s} {'images/s':>9s}")
    for name, seconds in results.items():
        print(f"{name:38s} {seconds:8.2f} {args.n / seconds:9.1f}")
    values = list(results.values())
    uncached, cached_first, cached_second, drafted = values[1], values[2], values[3], values[4]
    print(f"\nuncached epoch / cached second epoch: {uncached / cached_second:.1f}x")
    print(f"uncached epoch / cached first epoch:  {uncached / cached_first:.1f}x")
    print(f"full decode / draft decode:           {uncached / drafted:.1f}x")


if __name__ == "__main__":
    main()
