"""Reading the docs as data: fenced code blocks of a Markdown page."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def code_blocks(page: Path, language: str) -> list[str]:
    """The bodies of ``page``'s fenced code blocks tagged ``language``, in order."""
    return [body for lang, body in FENCE.findall(page.read_text()) if lang == language]
