"""The interface every data source implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import pandas as pd


class SourceError(RuntimeError):
    """A data source cannot be read; the message says which file, row or key and what to do."""


class Source(ABC):
    """Produces manifest rows (see :mod:`iqs.data.manifest`) for one data set.

    ``prepare`` does the slow, once-per-machine work (generating, caching) and runs on one process
    only; ``manifest`` must then be cheap and deterministic, as every process calls it.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def prepare(self) -> None:  # noqa: B027 - most sources have nothing to prepare
        """Create anything the manifest needs on disk."""

    @abstractmethod
    def manifest(self) -> pd.DataFrame:
        """Return the manifest rows of this source, ``source`` column set to ``self.name``."""
