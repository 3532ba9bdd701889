"""`iqs-data`: check, summarise and cache the data sets of a mix, configured as for training.

iqs-data check data=combined                    # missing, unreadable, duplicate images; bad rows
iqs-data summary data=technical data/labels=definition
iqs-data cache data=combined --workers 4        # decode and downscale big photos once

Any Hydra override of `iqs-train` works here (paths.data_dir=..., data.sources.ava.root=...).
Exit status: 0 when nothing was found wrong, 1 when a problem was reported, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import multiprocessing
import sys
from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from tqdm.auto import tqdm

from iqs.data import manifest as mf
from iqs.data.datamodule import IQSDataModule, summarize
from iqs.data.images import UnreadableImage, read_rgb
from iqs.data.labels import DROP
from iqs.data.sources.base import AnnotatedSource, SourceError
from iqs.train import CONFIG_DIR

log = logging.getLogger("iqs.data")
SHOWN = 5  # paths listed per kind of problem


def load_config(overrides: Sequence[str]) -> DictConfig:
    """The `iqs-train` configuration for ``overrides``, outside a Hydra run directory."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data.manifest_path=null", *overrides])
    # No run directory here. Set, not given as an override: a folder whose name holds a comma
    # or '=' would not parse as one.
    cfg.paths.output_dir = cfg.paths.root_dir
    return cfg


def build_datamodule(cfg: DictConfig) -> IQSDataModule:
    return instantiate(cfg.data, image_size=cfg.data.image_size or 224, _convert_="partial")


def check(dm: IQSDataModule, workers: int) -> int:
    """Report, per source: unreadable annotation rows, missing, unreadable and duplicate images."""
    problems = 0
    for name, source in dm.sources.items():
        print(f"\n== {name} ({type(source).__name__})")
        try:
            if isinstance(source, AnnotatedSource):  # every image, labelled by the rule or not
                df = source.manifest(include_dropped=True)
                mf.validate(df[df["label"] != DROP], where=f"source {name!r}")
            else:
                df = mf.validate(source.manifest(), where=f"source {name!r}")
        except (SourceError, mf.ManifestError) as e:
            print(f"  ERROR: {e}")
            problems += 1
            continue
        for line in source.problems:
            print(f"  {line}")
        problems += len(source.problems)
        unreadable, hashes = _scan(df["path"].tolist(), workers, name)
        kept = int((df["label"] != DROP).sum())
        print(
            f"  {len(df)} rows with an image file ({kept} labelled by the rule); "
            f"{len(unreadable)} unreadable"
        )
        for path, reason in unreadable[:SHOWN]:
            print(f"    {path}: {reason}")
        if len(unreadable) > SHOWN:
            print(f"    ... and {len(unreadable) - SHOWN} more")
        dupes = [paths for paths in hashes.values() if len(paths) > 1]
        if dupes:
            print(f"  {len(dupes)} image file(s) stored more than once (same bytes):")
            for paths in dupes[:SHOWN]:
                print(f"    {' = '.join(paths)}")
        problems += len(unreadable) + len(dupes)
    print(f"\n{problems} problem(s) found" if problems else "\nno problems found")
    return 1 if problems else 0


def _scan(paths: list[str], workers: int, name: str) -> tuple[list, dict[str, list[str]]]:
    unreadable: list[tuple[str, str]] = []
    hashes: dict[str, list[str]] = defaultdict(list)
    with ExitStack() as stack:
        if workers > 0:
            pool = stack.enter_context(multiprocessing.Pool(workers))
            results = pool.imap(_inspect, paths, chunksize=8)
        else:
            results = map(_inspect, paths)
        for path, digest, reason in tqdm(results, total=len(paths), desc=f"{name}: images"):
            if reason:
                unreadable.append((path, reason))
            else:
                hashes[digest].append(path)
    return unreadable, hashes


def _inspect(path: str) -> tuple[str, str, str]:
    """(path, sha1 of the bytes, reason it cannot be decoded or "")."""
    try:
        digest = hashlib.sha1(Path(path).read_bytes()).hexdigest()
        read_rgb(path, max_side=64)  # a reduced decode still reads every byte of a JPEG
    except UnreadableImage as e:
        return path, "", e.reason
    except OSError as e:
        return path, "", e.strerror or str(e)
    return path, digest, ""


def summary(dm: IQSDataModule) -> int:
    dm.setup()
    assert dm.manifest is not None
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(summarize(dm.manifest))
    return 1 if _reading_problems(dm) else 0


def _reading_problems(dm: IQSDataModule) -> int:
    """How many problems the sources reported while reading (said, with where to see them)."""
    problems = sum(len(s.problems) for s in dm.sources.values())
    if problems:
        print(f"\n{problems} problem(s) while reading; run `iqs-data check` to list them")
    return problems


def cache(dm: IQSDataModule, workers: int) -> int:
    if dm.image_cache is None:
        print("the image cache is off (data.cache=null): nothing to do")
        return 0
    dm.setup()
    assert dm.manifest is not None
    rows = dm.manifest[dm.manifest["source"].isin(dm.cached_sources)]
    print(f"caching {len(rows)} images into {dm.image_cache.root} ({dm.image_cache.max_side}px)")
    report = dm.image_cache.build(rows, workers=workers)
    print(report)
    # images left out while reading (missing, unreadable rows) were not cached either
    problems = _reading_problems(dm)
    return 1 if report.failed or problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="iqs-data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["check", "summary", "cache"])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for iqs-train")
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (0: this one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    try:
        dm = build_datamodule(load_config(args.overrides))
        if args.command == "check":
            return check(dm, args.workers)
        if args.command == "summary":
            return summary(dm)
        return cache(dm, args.workers)
    except (HydraException, OmegaConfBaseException) as e:
        print(f"iqs-data: configuration error: {e}", file=sys.stderr)
        return 2
    except (SourceError, mf.ManifestError) as e:
        print(f"iqs-data: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
