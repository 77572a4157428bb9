"""The error every layer raises for a config value or combination that cannot work.

It lives at the bottom so methods, students and networks can raise it without importing the
application layer; ``distill.errors.friendly_errors`` prints it as one line and exits 2.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value or combination that cannot work; the message names the key and the fix."""
