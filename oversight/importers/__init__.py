"""Importers: released studies brought into a store as ordinary runs, episodes, messages and
decisions, so that every report, metric, export and `rejudge` reads them like runs of our own.
"""

from .nyu_debate import ImportFailed, import_nyu_debate

__all__ = ["ImportFailed", "import_nyu_debate"]
