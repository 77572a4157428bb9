"""The one exception the data layer raises for problems a user can fix in the config."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset is missing, empty, unreadable or mis-configured.

    Messages name the cause and the fix (usually the ``dataset.*`` key to change), so a run that
    fails at start-up can be repaired from the error alone.
    """
