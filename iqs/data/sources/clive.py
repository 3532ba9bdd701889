"""LIVE In the Wild Image Quality Challenge (CLIVE): 1,162 photos, MOS 0-100."""

from __future__ import annotations

import pickle
import signal
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd

from iqs.data.sources.base import AnnotatedSource, SourceError

# scipy's MAT-file reader is not hardened against damaged files: a bad type code in a corrupt or
# truncated download crashes the whole process (scipy/scipy#25349). It runs in a child process,
# so such a file is a SourceError like any other. The child marks which file it is reading.
_READ_MATS = """
import pickle, sys
from scipy.io import loadmat
out = []
for i, path in enumerate(sys.argv[1:]):
    print(f"iqs-reading {i}", file=sys.stderr, flush=True)
    try:
        out.append(loadmat(path))
    except Exception as e:  # scipy raises several unrelated types for a bad file
        out.append(f"{type(e).__name__}: {e}")
pickle.dump(out, sys.stdout.buffer)
"""


class CLIVE(AnnotatedSource):
    """The MATLAB files ``Data/AllImages_release.mat`` and ``Data/AllMOS_release.mat`` (read
    with scipy). Their first 7 entries are the training images ``trainingImages/t1.bmp`` ...,
    left out unless ``keep_training_images``.
    """

    family = "clive"
    score_range = (0.0, 100.0)
    homepage = "https://live.ece.utexas.edu/research/ChallengeDB/"
    layout = "Data/AllImages_release.mat, Data/AllMOS_release.mat, Images/<name>"
    image_dir = "Images"

    def __init__(
        self,
        name: str = "clive",
        images_file: str = "Data/AllImages_release.mat",
        mos_file: str = "Data/AllMOS_release.mat",
        keep_training_images: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.images_file, self.mos_file = images_file, mos_file
        self.keep_training_images = keep_training_images

    def annotations(self) -> pd.DataFrame:
        images, scores = self._mats(self.images_file, self.mos_file)
        try:
            names = [str(np.ravel(n)[0]) for n in np.ravel(images)]
        except IndexError as e:  # an empty cell
            raise SourceError(f"{self.root / self.images_file}: an empty image name") from e
        try:
            mos = np.ravel(scores).astype(np.float64)
        except (TypeError, ValueError) as e:  # text or cells where numbers belong
            raise SourceError(f"{self.root / self.mos_file}: scores are not numbers ({e})") from e
        if len(names) != len(mos):
            raise SourceError(
                f"{self.name}: {self.images_file} lists {len(names)} images but "
                f"{self.mos_file} holds {len(mos)} scores"
            )
        start = 0 if self.keep_training_images else 7
        df = pd.DataFrame({"file": names[start:], "raw_score": mos[start:]})
        bad = ~np.isfinite(df["raw_score"].to_numpy())
        for i in np.flatnonzero(bad):
            self.problems.append(
                f"{self.root / self.mos_file}: entry {start + i + 1} is not a number"
            )
        lo, hi = self.score_range
        outside = ~bad & ((df["raw_score"] < lo) | (df["raw_score"] > hi)).to_numpy()
        for i in np.flatnonzero(outside):
            self.problems.append(
                f"{self.root / self.mos_file}: entry {start + i + 1} "
                f"({df['raw_score'].iloc[i]:g}) outside {lo:g}..{hi:g}, left out"
            )
        df = df.loc[~(bad | outside)]
        df["id"] = df["file"]
        return df.reset_index(drop=True)

    def _mats(self, *relative: str) -> list[np.ndarray]:
        """The one variable of each MATLAB file."""
        paths = [self.file(r) for r in relative]
        try:
            done = subprocess.run(
                [sys.executable, "-c", _READ_MATS, *map(str, paths)],
                capture_output=True,
                timeout=600,
            )
        except subprocess.TimeoutExpired as e:
            raise SourceError(f"{self.name}: reading {[str(p) for p in paths]} hangs") from e
        if done.returncode != 0:
            lines = done.stderr.decode(errors="replace").splitlines()
            marks = [int(m.split()[1]) for m in lines if m.startswith("iqs-reading ")]
            path = paths[marks[-1]] if marks else paths
            rc = -done.returncode
            how = f"crashed: {signal.strsignal(rc) or rc}" if rc > 0 else f"failed: {lines[-1:]}"
            raise SourceError(f"{path}: not a readable MATLAB file (the reader {how})")
        arrays = []
        for path, data in zip(paths, pickle.loads(done.stdout)):
            if isinstance(data, str):
                raise SourceError(f"{path}: not a readable MATLAB file ({data})")
            variables = {k: v for k, v in data.items() if not k.startswith("__")}
            if len(variables) != 1:
                raise SourceError(f"{path}: expected one variable, found {sorted(variables)}")
            arrays.append(next(iter(variables.values())))
        return arrays
