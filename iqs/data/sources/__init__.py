"""Data sources: each turns one data set, as distributed, into manifest rows.

A source is a class with ``prepare()`` and ``manifest()`` plus one YAML under ``conf/source/``
that names it with ``_target_``; adding a data set is one new module and one YAML.
"""

from iqs.data.sources.base import Source, SourceError

__all__ = ["Source", "SourceError"]
