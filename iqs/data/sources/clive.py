"""LIVE In the Wild Image Quality Challenge (CLIVE): 1,162 photos, MOS 0-100."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.io import loadmat

from iqs.data.sources.base import AnnotatedSource, SourceError


class CLIVE(AnnotatedSource):
    """The MATLAB files ``Data/AllImages_release.mat`` and ``Data/AllMOS_release.mat`` (read
    with scipy). Their first 7 entries are the training images ``trainingImages/t1.bmp`` ...,
    left out unless ``keep_training_images``.
    """

    family = "clive"
    score_range = (0.0, 100.0)
    homepage = "https://live.ece.utexas.edu/research/ChallengeDB/"
    layout = "Data/AllImages_release.mat, Data/AllMOS_release.mat, Images/<name>"

    def __init__(
        self,
        name: str = "clive",
        images_file: str = "Data/AllImages_release.mat",
        mos_file: str = "Data/AllMOS_release.mat",
        image_dir: str = "Images",
        keep_training_images: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        self.images_file, self.mos_file = images_file, mos_file
        self.image_dir = image_dir
        self.keep_training_images = keep_training_images

    def annotations(self) -> pd.DataFrame:
        names = [str(np.ravel(n)[0]) for n in np.ravel(self._mat(self.images_file))]
        mos = np.ravel(self._mat(self.mos_file)).astype(np.float64)
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
        df = df.loc[~bad]
        df["id"] = df["file"]
        return df.reset_index(drop=True)

    def _mat(self, relative: str) -> np.ndarray:
        path = self.file(relative)
        try:
            data = loadmat(path)
        except Exception as e:  # scipy raises several unrelated types for a bad file
            raise SourceError(f"{path}: not a readable MATLAB file ({e})") from e
        arrays = {k: v for k, v in data.items() if not k.startswith("__")}
        if len(arrays) != 1:
            raise SourceError(f"{path}: expected one variable, found {sorted(arrays)}")
        return next(iter(arrays.values()))
