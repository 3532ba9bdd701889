"""How often does digiKam's preprocessing change a model's label? (no ground truth needed)

    .venv/bin/python experiments/preprocessing_agreement/measure.py CKPT [CKPT ...]

Each checkpoint labels the same photos twice with `iqs.predict`: once with its training-time
evaluation transform (area resize to its input size), once exactly as digiKam feeds an exported
model (299x299 nearest neighbour, then the graph's bilinear resize to the input size). Photos:
the 8 built-in photographs, whole and as 6 random crops each (56 JPEGs). Prints the share of
photos whose label is the same and the mean absolute score difference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from iqs.data.sources.synthetic import builtin_photo_loaders
from iqs.predict import predict

FOLDER = Path("outputs/preprocessing_agreement/photos")


def photos(seed: int = 0) -> list[Path]:
    FOLDER.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, load in builtin_photo_loaders().items():
        rgb = load()
        Image.fromarray(rgb).save(FOLDER / f"{name}.jpg", quality=92)
        h, w = rgb.shape[:2]
        for k in range(6):
            s = rng.uniform(0.35, 0.8)
            ch, cw = int(h * s), int(w * s)
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            Image.fromarray(rgb[y : y + ch, x : x + cw]).save(
                FOLDER / f"{name}_{k}.jpg", quality=92
            )
    return sorted(FOLDER.glob("*.jpg"))


def main() -> None:
    files = photos()
    print("| checkpoint | photos | label agreement | mean abs score difference |")
    print("|---|---|---|---|")
    for ckpt in sys.argv[1:]:
        a = predict(files, ckpt, "train", progress=False)
        b = predict(files, ckpt, "digikam", progress=False)
        same = np.mean([x["label"] == y["label"] for x, y in zip(a, b)])
        diff = np.mean([abs(x["score"] - y["score"]) for x, y in zip(a, b)])
        print(f"| {ckpt} | {len(files)} | {same:.3f} | {diff:.3f} |")


if __name__ == "__main__":
    main()
