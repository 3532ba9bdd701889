"""iqs: train, compare and ship the models behind digiKam's Image Quality Sorter."""

import os

# Albumentations checks PyPI for a newer release on import; these machines are often offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
