"""`iqs-eval`: a checkpoint on a data mix and split -> metrics per source and overall.

iqs-eval ckpt_path=outputs/train/runs/<...>/checkpoints/epoch_007.ckpt
iqs-eval ckpt_path=best.ckpt data=combined split=val

Writes to its run directory: ``eval_metrics.json`` (every metric, confusion matrices, the
digiKam-preprocessing comparison), ``predictions.csv`` (one row per photo) and
``confusion_matrix_<all|source>.png``; prints a table.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from iqs.data.datamodule import IQSDataModule
from iqs.data.dataset import collate_skip_none
from iqs.data.images import UnreadableImage, read_rgb, reuse_freed_memory
from iqs.data.labels import CLASS_NAMES
from iqs.data.transforms import eval_transform
from iqs.deploy import DeployedModel, digikam_preprocess
from iqs.metrics import QualityMetrics
from iqs.models.backbones import input_config
from iqs.models.module import IQSModule, load_checkpoint
from iqs.train import CONFIG_DIR
from iqs.utils import atomic_write, atomic_write_text

log = logging.getLogger("iqs.eval")


class EvalRows(Dataset):
    """Manifest rows -> the training-time eval input and, optionally, digiKam's input."""

    def __init__(self, df: pd.DataFrame, transform: Any, digikam: bool) -> None:
        self.df = df.reset_index(drop=True)
        self.transform = transform
        self.digikam = digikam

    def __len__(self) -> int:
        return len(self.df)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        try:
            rgb = read_rgb(self.df.at[i, "path"])
        except UnreadableImage as e:
            log.warning("skipping %s", e)
            return None
        item = {"index": i, "image": self.transform(image=rgb)["image"]}
        if self.digikam:
            item["blob"] = torch.from_numpy(digikam_preprocess(rgb))
        return item


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    model, run_cfg = load_checkpoint(cfg.ckpt_path)
    if cfg.get("seed") is None:
        cfg.seed = run_cfg.seed
    data_cfg = cfg.data if cfg.get("data") else run_cfg.data
    data_cfg = OmegaConf.merge(data_cfg, {"manifest_path": None, "num_workers": 0})
    inp = input_config(run_cfg.model.backbone, run_cfg.data.get("image_size"))
    dm: IQSDataModule = instantiate(
        data_cfg, image_size=inp.size, mean=inp.mean, std=inp.std, _convert_="partial"
    )
    dm.prepare_data()
    dm.setup()
    assert dm.manifest is not None
    rows = dm.manifest[dm.manifest["split"] == cfg.split].reset_index(drop=True)
    if rows.empty:
        raise SystemExit(f"iqs-eval: the {cfg.split} split of this mix is empty")
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    deployed = DeployedModel(model, inp.size, inp.mean, inp.std).to(device).eval()
    loader = DataLoader(
        EvalRows(rows, eval_transform(inp.size, inp.mean, inp.std, dm.resize), cfg.compare_digikam),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        collate_fn=collate_skip_none,
    )
    preds = _predict(model, deployed, loader, device, len(rows))
    rows = pd.concat([rows, preds], axis=1)
    read = rows["pred_label"].notna()
    report = {
        "checkpoint": str(cfg.ckpt_path),
        "split": cfg.split,
        "rows": len(rows),
        "unreadable": int((~read).sum()),
        "metrics": _metrics(rows[read], dm.source_names, "pred"),
    }
    if cfg.compare_digikam:
        same = rows.loc[read, "pred_label"] == rows.loc[read, "digikam_label"]
        report["digikam"] = {
            "label_agreement": float(same.mean()),
            "labels_changed": int((~same).sum()),
            "metrics": _metrics(rows[read], dm.source_names, "digikam"),
        }
    out = Path(cfg.paths.output_dir)
    with atomic_write(out / "predictions.csv") as f:
        rows.drop(columns=["histogram"]).to_csv(f, index=False)
    atomic_write_text(out / "eval_metrics.json", json.dumps(report, indent=2))
    _plot_confusion_matrices(report["metrics"]["confusion_matrices"], out)
    return report


@torch.inference_mode()
def _predict(
    model: IQSModule, deployed: DeployedModel, loader: DataLoader, device: torch.device, n: int
) -> pd.DataFrame:
    cols: dict[str, np.ndarray] = {
        "pred_label": np.full(n, np.nan),
        "pred_score": np.full(n, np.nan),
        "digikam_label": np.full(n, np.nan),
        "digikam_score": np.full(n, np.nan),
    }
    levels = torch.arange(len(CLASS_NAMES), device=device, dtype=torch.float32)
    for batch in tqdm(loader, desc="eval", unit="batch"):
        if "image" not in batch:  # only unreadable photos (their rows keep NaN predictions)
            continue
        idx = batch["index"].numpy()
        outputs = model(batch["image"].to(device))
        cols["pred_label"][idx] = model.loss.class_logits(outputs).argmax(1).cpu().numpy()
        cols["pred_score"][idx] = model.loss.predict_score(outputs).float().cpu().numpy()
        if "blob" in batch:
            probs = deployed(batch["blob"].to(device))
            cols["digikam_label"][idx] = probs.argmax(1).cpu().numpy()
            cols["digikam_score"][idx] = (probs @ levels / (len(levels) - 1)).cpu().numpy()
    return pd.DataFrame(cols)


def _metrics(rows: pd.DataFrame, source_names: list[str], prefix: str) -> dict[str, Any]:
    metrics = QualityMetrics(source_names)
    index = {name: i for i, name in enumerate(source_names)}
    metrics.update(
        torch.as_tensor(rows[f"{prefix}_label"].to_numpy(np.int64)),
        torch.as_tensor(rows[f"{prefix}_score"].to_numpy(np.float32)),
        torch.as_tensor(rows["label"].to_numpy(np.int64, copy=True)),
        torch.as_tensor(rows["score"].to_numpy(np.float32)),
        torch.as_tensor(rows["source"].map(index).to_numpy(np.int64)),
    )
    values = {k: _number(v) for k, v in metrics.compute().items()}
    present = [s for s in source_names if (rows["source"] == s).any()]
    values["confusion_matrices"] = {
        "all": metrics.confusion_matrix().tolist(),
        **{s: metrics.confusion_matrix(s).tolist() for s in present},
    }
    return values


def _number(v: torch.Tensor) -> float | None:
    x = float(v)
    return None if math.isnan(x) else x


def _plot_confusion_matrices(matrices: dict[str, list[list[int]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    for name, matrix in matrices.items():
        fig, ax = plt.subplots(figsize=(4.2, 3.6))
        ConfusionMatrixDisplay(np.array(matrix), display_labels=CLASS_NAMES).plot(
            ax=ax, colorbar=False, cmap="Blues"
        )
        ax.set_title(name)
        fig.tight_layout()
        fig.savefig(out / f"confusion_matrix_{name}.png", dpi=100)
        plt.close(fig)


def format_report(report: dict[str, Any]) -> str:
    metrics = report["metrics"]
    sources = sorted({k.split("/")[0] for k in metrics if "/" in k})
    names = ["acc", "f1_macro", *(f"f1_{c}" for c in CLASS_NAMES), "srcc", "plcc"]
    table = pd.DataFrame(
        {"all": [metrics.get(n) for n in names]}
        | {s: [metrics.get(f"{s}/{n}") for n in names] for s in sources},
        index=names,
    )
    text = f"{report['split']} split, {report['rows']} rows ({report['unreadable']} unreadable)\n"
    text += table.round(3).to_string()
    if "digikam" in report:
        d = report["digikam"]
        text += (
            f"\ndigiKam preprocessing (299 nearest, [-1, 1]): label agreement "
            f"{d['label_agreement']:.3f} ({d['labels_changed']} changed), macro F1 "
            f"{d['metrics']['f1_macro']:.3f}, SRCC {d['metrics']['srcc']:.3f}"
        )
    return text


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    reuse_freed_memory()  # the model's process too, not only the decoding workers
    report = evaluate(cfg)
    print(format_report(report))
    log.info("written to %s", cfg.paths.output_dir)


if __name__ == "__main__":
    main()
