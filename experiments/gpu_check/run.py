"""A few minutes on one GPU: the study's InceptionV3 in fp32 vs bf16 AMP + channels_last, and
whether the data pipeline can feed it.

    python experiments/gpu_check/run.py [--out FOLDER]        # on a GPU machine
    python experiments/gpu_check/run.py --device cpu --quick   # a dry run of the script itself

1. Training steps/s of ``model=inception_v3`` (299 px, batch 64, from scratch) through Lightning
   (``trainer.precision``, ``model.channels_last``: the keys a user sets) on batches already on
   the GPU: fp32 (``32-true``), bf16 AMP (``bf16-mixed``), and bf16 AMP + channels_last.
2. Images/s of the real training loader (IQSDataModule, ``data.num_workers=auto``) over
   generated 1024x768 JPEGs at 299 px, with and without the resize cache (second epoch).
3. The pipeline's images/s over the model's bf16 + channels_last images/s: at >= 1 the data
   keeps the GPU busy.

Writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out`` (default: this folder) and prints
the table. The card, driver and versions are part of the output.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from run import best_rates, compose_train, make_photos, sync_cuda  # noqa: E402

from iqs.train import build  # noqa: E402


class StepClock(pl.Callback):
    """Wall time from the start of step ``skip`` to the end of the last step (GPU work
    included: CUDA is synchronised at both ends)."""

    def __init__(self, skip: int) -> None:
        self.skip, self.start, self.end = skip, 0.0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == self.skip:
            sync_cuda()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        sync_cuda()
        self.end = time.perf_counter()


def train_rate(device: str, precision: str, channels_last: bool, batch: int, size: int,
               steps: int, skip: int) -> float:  # fmt: skip
    """Images/s of Lightning training steps of inception_v3 on batches resident on ``device``."""
    cfg = compose_train([
        "model=inception_v3", "paths.root_dir=.", "paths.output_dir=.", f"data.image_size={size}",
        f"model.channels_last={str(channels_last).lower()}",
    ])  # fmt: skip
    _, model = build(cfg)
    model.scheduler_factory = None
    gen = torch.Generator().manual_seed(0)
    data = [
        {
            "image": torch.randn(batch, 3, size, size, generator=gen).to(device),
            "label": torch.randint(0, 3, (batch,), generator=gen).to(device),
            "score": torch.rand(batch, generator=gen).to(device),
            "source": torch.zeros(batch, dtype=torch.long, device=device),
        }
        for _ in range(4)
    ]
    loader = DataLoader([data[i % 4] for i in range(steps)], batch_size=None)
    clock = StepClock(skip)
    trainer = pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=precision,
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[clock], benchmark=True,
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=loader)
    return (steps - skip) * batch / (clock.end - clock.start)


def loader_rate(tmp: Path, n: int, size: int, batch: int, cached: bool) -> tuple[float, int]:
    root = tmp / "photos"
    if not root.exists():
        paths = make_photos(root, n, 1024, 768)
        (root / "labels.csv").write_text(
            "path,score\n" + "".join(f"{p.name},{(i % 10) / 10}\n" for i, p in enumerate(paths))
        )
    cfg = compose_train([
        "data=folder", f"data.sources.folder.root={root}", f"data.batch_size={batch}",
        "data.split_fractions={train:1.0,val:0.0,test:0.0}", "paths.root_dir=.",
        "paths.output_dir=.", "data.manifest_path=null", f"data.image_size={size}",
        "model=inception_v3", f"data.cache.dir={tmp / 'cache'}",
        f"data.sources.folder.cache={str(cached).lower()}",
    ])  # fmt: skip
    datamodule, _ = build(cfg)
    datamodule.setup()
    rows = len(datamodule.datasets["train"])
    rate = best_rates({"pipeline": datamodule.train_dataloader}, rows, 1)["pipeline"]
    return rate, datamodule.num_workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here; use --device cpu --quick to dry-run the script")
    batch, size, steps, skip, photos = (4, 75, 6, 2, 16) if args.quick else (64, 299, 40, 10, 512)
    result: dict = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "torch": torch.__version__, "lightning": pl.__version__,
        "cuda": torch.version.cuda, "batch": batch, "image_size": size,
    }  # fmt: skip
    runs = {
        "fp32 (32-true)": ("32-true", False),
        "bf16 AMP (bf16-mixed)": ("bf16-mixed", False),
        "bf16 AMP + channels_last": ("bf16-mixed", True),
    }
    rates = {}
    for name, (precision, channels_last) in runs.items():
        rates[name] = train_rate(args.device, precision, channels_last, batch, size, steps, skip)
        print(f"{name:28s} {rates[name]:9.1f} img/s", flush=True)
    result["train_img_per_s"] = rates
    with tempfile.TemporaryDirectory(prefix="iqs-gpu-check-") as tmp:
        uncached, workers = loader_rate(Path(tmp), photos, size, batch, cached=False)
        cached, _ = loader_rate(Path(tmp), photos, size, batch, cached=True)
    result["loader_workers"] = workers
    result["loader_img_per_s"] = {"uncached": uncached, "cached (2nd epoch)": cached}
    best = rates["bf16 AMP + channels_last"]
    fp32 = rates["fp32 (32-true)"]
    lines = [
        f"# GPU check: {result['device']}",
        "",
        f"torch {result['torch']}, Lightning {result['lightning']}, CUDA {result['cuda']}; "
        f"inception_v3 at {size} px, batch {batch}, from scratch.",
        "",
        "| measure | images/s | vs fp32 |",
        "|---|---|---|",
        *(f"| train step, {k} | {v:.1f} | {v / fp32:.2f}x |" for k, v in rates.items()),
        f"| loader ({workers} workers), uncached 1024x768 JPEGs | {uncached:.1f} | "
        f"feeds {uncached / best:.0%} of bf16+CL |",
        f"| loader ({workers} workers), resize cache | {cached:.1f} | "
        f"feeds {cached / best:.0%} of bf16+CL |",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    (args.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
