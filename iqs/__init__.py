"""iqs: train, compare and ship the models behind digiKam's Image Quality Sorter."""

import os

from omegaconf import OmegaConf

# Albumentations checks PyPI for a newer release on import; these machines are often offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# The directory a command starts in, for conf/paths: ${hydra:runtime.cwd} is not set yet when
# Hydra resolves a multirun's sweep directory, so `iqs-train -m ...` failed with it.
OmegaConf.register_new_resolver("iqs.cwd", os.getcwd, replace=True)

__version__ = "0.1.0"
