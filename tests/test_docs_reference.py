"""Every public module of gputime has its page in the API reference.

A public module is one whose dotted name has no part starting with ``_``
(``gputime``, ``gputime.testing``, and integrations as they are added); a package
that only groups modules (no ``__all__``, as ``gputime.integrations`` may be)
needs no page of its own. A public module's page
is a file under docs/reference/ rendering it with ``::: module`` (mkdocstrings);
``mkdocs build --strict`` then checks the page is in the nav and its
cross-references resolve.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import gputime

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"


def public_modules() -> list[str]:
    found = ["gputime"]
    for module in pkgutil.walk_packages(gputime.__path__, prefix="gputime."):
        parts = module.name.split(".")
        if any(part.startswith("_") for part in parts):
            continue
        if module.ispkg and not getattr(importlib.import_module(module.name), "__all__", None):
            continue  # a package that only groups modules
        found.append(module.name)
    return found


def rendered() -> set[str]:
    return {
        match
        for page in REFERENCE.glob("*.md")
        for match in re.findall(r"^::: ([\w.]+)\s*$", page.read_text(encoding="utf-8"), re.M)
    }


def test_the_public_modules_are_found() -> None:
    assert {"gputime", "gputime.testing"} <= set(public_modules())


@pytest.mark.parametrize("module", public_modules())
def test_public_module_has_a_reference_page(module: str) -> None:
    assert module in rendered(), (
        f"{module} is public but no page of docs/reference/ renders it: add "
        f"docs/reference/{module.rsplit('.', 1)[-1]}.md with '::: {module}' and a nav entry "
        "in mkdocs.yml (docs/contributing.md)"
    )
