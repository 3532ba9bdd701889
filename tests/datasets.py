"""Tiny image trees in each real data set's layout, with annotation files in the exact format.

Annotation rows come from the real files in ``../shared/datasets`` where those are there
(KonIQ-10k, SPAQ, AVA's test list); the others (AVA.txt, EVA votes, KADID dmos.csv, CLIVE .mat)
are written in their documented formats (``../shared/datasets/FORMATS.md``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image
from scipy.io import savemat

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IQS_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the tests read the real annotation files from ../shared/datasets "
            "(or IQS_SHARED_DATASETS)"
        )
    return path


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (96, 72)) -> Path:
    """A small real photo crop (different per seed) as a JPEG."""
    rgb = skimage.data.astronaut()
    rng = np.random.default_rng(seed)
    y, x = rng.integers(0, 512 - size[1]), rng.integers(0, 512 - size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb[y : y + size[1], x : x + size[0]]).save(path, quality=90)
    return path


def head_lines(src: Path, dst: Path, keep: list[int]) -> None:
    """Copy the header and the chosen data lines (0-based) of ``src`` byte for byte."""
    lines = src.read_bytes().splitlines(keepends=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(b"".join([lines[0], *(lines[i + 1] for i in keep)]))


def koniq_tree(root: Path, n: int = 24) -> list[str]:
    """Rows chosen across the official split: some training, validation and test images."""
    sets = shared("koniq10k", "koniq10k_distributions_sets.csv").read_text().splitlines()[1:]
    by_set: dict[str, list[int]] = {}
    for i, line in enumerate(sets):
        by_set.setdefault(line.rsplit(",", 1)[1], []).append(i)
    keep = sorted(by_set["training"][: n // 2] + by_set["validation"][: n // 4]
                  + by_set["test"][: n // 4])  # fmt: skip
    head_lines(shared("koniq10k", "koniq10k_distributions_sets.csv"),
               root / "koniq10k_distributions_sets.csv", keep)  # fmt: skip
    # The two files list the same images in the same order.
    head_lines(shared("koniq10k", "koniq10k_scores_and_distributions.csv"),
               root / "koniq10k_scores_and_distributions.csv", keep)  # fmt: skip
    names = [sets[i].split(",", 1)[0] for i in keep]
    for i, name in enumerate(names):
        write_jpeg(root / "1024x768" / name, seed=i)
    return names


def spaq_tree(root: Path, n: int = 24) -> list[str]:
    head_lines(
        shared("spaq", "SPAQ_annotations.csv"), root / "SPAQ_annotations.csv", list(range(n))
    )
    names = [f"{i:05d}.jpg" for i in range(1, n + 1)]
    for i, name in enumerate(names):
        write_jpeg(root / "TestImage" / name, seed=100 + i, size=(120, 90))
    return names


def ava_line(index: int, image_id: int, mean_bin: int, rng: np.random.Generator) -> str:
    """One AVA.txt line: index, id, 10 vote counts peaked at ``mean_bin``, 2 tags, challenge."""
    counts = rng.multinomial(120, np.exp(-0.5 * (np.arange(1, 11) - mean_bin) ** 2) / 2.5066)
    return " ".join(map(str, [index, image_id, *counts, 0, 0, 1396]))


def ava_tree(root: Path, ids: list[int], test_ids: list[int]) -> None:
    rng = np.random.default_rng(0)
    lines = [ava_line(i + 1, image_id, 2 + 6 * (i % 2), rng) for i, image_id in enumerate(ids)]
    (root).mkdir(parents=True, exist_ok=True)
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    lists = root / "aesthetics_image_lists"
    lists.mkdir(exist_ok=True)
    (lists / "generic_test.jpgl").write_text("".join(f"{i}\n" for i in test_ids))
    for i, image_id in enumerate(ids):
        write_jpeg(root / "images" / f"{image_id}.jpg", seed=200 + i)


EVA_HEADER = (
    "image_id=user_id=score=difficulty=visual=composition=quality=semantic=vote_time=1=2=3=4"
)


def eva_tree(root: Path, ids: list[int], votes_per_image: int = 30) -> None:
    rng = np.random.default_rng(1)
    rows = [EVA_HEADER]
    for k, image_id in enumerate(ids):
        centre = 3 if k % 2 else 8
        for user in range(votes_per_image):
            score = int(np.clip(rng.normal(centre, 1), 0, 10))
            score_text = f"{score}.0" if user % 3 == 0 else str(score)  # both spellings occur
            rows.append(f"{image_id}={user}={score_text}=2=3=3=3=4=2021-01-01 10:00:00=1=2=3=4")
    path = root / "data" / "votes_filtered.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    for i, image_id in enumerate(ids):
        write_jpeg(root / "EVA_together" / f"{image_id}.jpg", seed=300 + i)


def kadid_tree(root: Path, refs: int = 4, distortions: int = 3) -> None:
    rows = ["dist_img,ref_img,dmos,var"]
    rng = np.random.default_rng(2)
    for r in range(1, refs + 1):
        for d in range(1, distortions + 1):
            for level in range(1, 3):
                name = f"I{r:02d}_{d:02d}_{level:02d}.png"
                rows.append(f"{name},I{r:02d}.png,{rng.uniform(1, 5):.2f},{rng.uniform(0, 1):.3f}")
                path = root / "images" / name
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.open(write_jpeg(root / "tmp.jpg", seed=r * 10 + d)).save(path)
    (root / "tmp.jpg").unlink()
    (root / "dmos.csv").write_text("\n".join(rows) + "\n")


def clive_tree(root: Path, n: int = 12) -> list[str]:
    """The MATLAB files as distributed: 1 x N cell arrays, the first 7 the training images."""
    names = [f"trainingImages/t{i}.bmp" for i in range(1, 8)] + [f"{i}.JPG" for i in range(n)]
    mos = np.linspace(10, 90, len(names)).reshape(1, -1)
    cells = np.empty((1, len(names)), dtype=object)
    cells[0, :] = names
    (root / "Data").mkdir(parents=True, exist_ok=True)
    savemat(root / "Data" / "AllImages_release.mat", {"AllImages_release": cells})
    savemat(root / "Data" / "AllMOS_release.mat", {"AllMOS_release": mos})
    for i, name in enumerate(names[7:]):
        write_jpeg(root / "Images" / name, seed=400 + i)
    return names


def folder_tree(root: Path, n: int = 9) -> None:
    rows = ["path,score"]
    for i in range(n):
        rel = f"{'holiday' if i % 2 else 'home'}/IMG_{i}.jpg"
        write_jpeg(root / rel, seed=500 + i)
        rows.append(f"{rel},{i / (n - 1):.3f}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
