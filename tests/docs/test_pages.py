"""The docs speak to users: every `docs/methods.md §N` citation in the code names a real section, and no
page points outside the repository or at how the work was organised."""

from __future__ import annotations

import importlib
import re

import pytest

from tests.docs.markdown import REPO

PAGES = sorted((REPO / "docs").glob("*.md")) + [
    REPO / "README.md",
    REPO / "experiments" / "README.md",
]
SECTION = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", re.MULTILINE)
CITATION = re.compile(r"methods\.md,?\s+(?:§\s?|section\s+|sec\.\s?)?(\d+(?:\.\d+)?)")
# Words about the project's own work history or files outside it, which a reader cannot follow.
OFF_LIMITS = re.compile(
    r"\.\./shared|\bissue \d|\bsession\b|\baudit|\btracker\b|closing note|\bwe fixed\b",
    re.IGNORECASE,
)


def sections() -> set[str]:
    return set(SECTION.findall((REPO / "docs" / "methods.md").read_text()))


def test_methods_md_keeps_every_numbered_section():
    numbers = sections()
    assert {str(n) for n in range(13)} <= numbers
    assert {"1.5", "3.5", "4.2", "4.6", "5.4", "10.3", "12.4"} <= numbers


def test_every_methods_md_citation_in_the_code_names_a_section():
    known, missing = sections(), []
    for folder in ("distill", "conf", "tests", "experiments"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix not in (".py", ".yaml") or not path.is_file():
                continue
            for number in CITATION.findall(path.read_text()):
                if number.rstrip(".") not in known and number.split(".")[0] not in known:
                    missing.append(f"{path.relative_to(REPO)}: docs/methods.md {number}")
    assert missing == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_a_page_speaks_to_users(page):
    text = page.read_text()
    assert OFF_LIMITS.findall(text) == []
    assert re.findall(r"\]\((?:\.\./){2,}", text) == [], "links must stay inside the repository"


# Where docs/extending.md tells the reader to save its example: not files of this repository.
EXAMPLE = {"distill/methods/direct_regression.py", "conf/method/direct_regression.yaml"}


def resolves(dotted: str) -> bool:
    """Whether ``distill.a.b.C`` names a module, or an attribute of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def test_every_module_and_class_the_pages_name_exists():
    names = {n for page in PAGES for n in re.findall(r"`(distill(?:\.\w+)+)`", page.read_text())}
    assert names, "the pages name the code they describe"
    assert sorted(n for n in names if not resolves(n)) == []


def test_every_repository_path_the_pages_name_exists():
    paths = {
        p
        for page in PAGES
        for p in re.findall(r"`((?:distill|conf|tests|experiments)/[\w./-]+\.(?:py|yaml|md))`", page.read_text())
    }
    assert paths, "the pages name files"
    assert sorted(p for p in paths - EXAMPLE if not (REPO / p).exists()) == []
