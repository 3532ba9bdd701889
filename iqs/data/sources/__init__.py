"""Data sources: each turns one data set, as distributed, into manifest rows.

A source is a class with ``prepare()`` and ``manifest()``, named with ``_target_`` under
``sources:`` in a ``conf/data/*.yaml`` mix; adding a data set is one new module and its entry.
"""

from iqs.data.sources.base import Source, SourceError

__all__ = ["Source", "SourceError"]
