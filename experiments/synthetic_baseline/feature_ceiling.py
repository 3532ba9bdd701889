"""How far do content-agnostic hand-made statistics get on a synthetic manifest?

    .venv/bin/python experiments/synthetic_baseline/feature_ceiling.py outputs/<run>/manifest.csv

Fits gradient-boosted trees on 14 no-reference statistics of each crop (sharpness, noise
residual, brightness, clipping, 8x8 blockiness) on the train split and prints the SRCC against
the true score on every split: a rough ceiling for what the image alone says about the label.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.ensemble import HistGradientBoostingRegressor

from iqs.data import manifest as mf


def features(path: str) -> list[float]:
    grey = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2GRAY).astype(np.float32)
    residual = np.abs(grey - cv2.medianBlur(grey.astype(np.uint8), 3).astype(np.float32))
    lap = cv2.Laplacian(grey, cv2.CV_32F)
    grad = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    steps = np.abs(np.diff(grey, axis=1))
    blockiness = steps[:, 7::8].mean() / (steps.mean() + 1e-6)
    return [
        residual.mean(), float(np.median(residual)), lap.var(), np.abs(lap).mean(),
        grad.mean(), float(np.percentile(grad, 90)), grey.mean(), grey.std(),
        (grey > 250).mean(), (grey < 5).mean(), blockiness,
        float(np.percentile(grey, 5)), float(np.percentile(grey, 95)), float(np.median(grey)),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", help="a run's manifest.csv (every row has a split)")
    df: pd.DataFrame = mf.load(parser.parse_args().manifest)
    x = np.array([features(p) for p in df["path"]])
    train = (df["split"] == "train").to_numpy()
    model = HistGradientBoostingRegressor(max_iter=300, random_state=0)
    model.fit(x[train], df.loc[train, "score"])
    for split in mf.SPLITS:
        rows = (df["split"] == split).to_numpy()
        srcc = spearmanr(model.predict(x[rows]), df.loc[rows, "score"])[0]
        print(f"{split:5s} SRCC {srcc:.3f} ({rows.sum()} crops)")


if __name__ == "__main__":
    main()
