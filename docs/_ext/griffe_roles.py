"""A griffe extension for the API reference: Sphinx roles in docstrings become links.

gputime's docstrings cross-reference with Sphinx roles (``:class:`~gputime.Tracker```,
``:meth:`poll```), which read well in ``help()`` and in an editor. mkdocstrings
renders Markdown, where such a role would show as literal text. This extension
rewrites each role, once the package is loaded:

- to a cross-reference (``[`Tracker`][gputime.Tracker]``) when its target is a
  public object of the reference (a name of ``gputime.__all__`` or of
  ``gputime.testing.__all__``, or a public member of one), resolved like Sphinx
  does: as written, then relative to the object whose docstring holds it, then
  to its module, then to ``gputime`` and ``gputime.testing``;
- to plain code (`` `gputime._ledger` ``) otherwise: private modules and names
  are not in the reference, and a link to them would be broken.

``mkdocs build --strict`` then fails on a cross-reference that does not resolve.

It also gives an attribute without a docstring the ``#:`` comment above it, as
Sphinx's autodoc does (``TaskHandle.service``, ``TaskHandle.error``), or else the
documentation of the attribute it overrides in a base class (``TaskHandle.end_time``).
Used from mkdocs.yml (``extensions: [docs/_ext/griffe_roles.py]``); not a page of
the site (``exclude_docs``).
"""

from __future__ import annotations

import importlib
import re
from typing import Any

import griffe

#: ``:role:`target``` or ``:role:`~target```, with Sphinx's Python roles.
ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|data|mod|exc|obj):`(~?)([\w.]+)(?:\(\))?`")

#: The modules whose ``__all__`` is the public API the reference documents.
PUBLIC_MODULES = ("gputime", "gputime.testing")


def _public(path: str) -> bool:
    """Whether ``path`` names a public object the reference renders."""
    for module_name in PUBLIC_MODULES:
        prefix = module_name + "."
        if not path.startswith(prefix):
            continue
        first, *rest = path[len(prefix) :].split(".")
        module = importlib.import_module(module_name)
        if first not in getattr(module, "__all__", ()):
            continue
        target: Any = getattr(module, first)
        for part in rest:
            if part.startswith("_") or not hasattr(target, part):
                break
            target = getattr(target, part)
        else:
            return True
    return False


def _candidates(target: str, obj: griffe.Object) -> list[str]:
    """Where a role's target may point, in the order Sphinx looks."""
    found = [target]
    owner: griffe.Object | None = obj
    while owner is not None:
        found.append(f"{owner.path}.{target}")
        owner = owner.parent
    found.extend(f"{module}.{target}" for module in PUBLIC_MODULES)
    return found


def rewrite(text: str, obj: griffe.Object) -> str:
    """``text`` with every Sphinx role made Markdown."""

    def replace(match: re.Match[str]) -> str:
        short, target = match[1] == "~", match[2]
        shown = target.rsplit(".", 1)[-1] if short else target
        for path in _candidates(target, obj):
            # An alias's path is where it is imported (gputime.Tracker), which is
            # also where the reference renders it.
            if _public(path):
                return f"[`{shown}`][{path}]"
        return f"`{shown}`"

    return ROLE.sub(replace, text)


def comment_doc(obj: griffe.Object) -> str | None:
    """The ``#:`` comment lines just above an attribute, as text; ``None`` if none."""
    if not isinstance(obj, griffe.Attribute) or obj.lineno is None:
        return None
    filepath = obj.filepath if not isinstance(obj.filepath, list) else None
    if filepath is None or filepath not in obj.lines_collection:
        return None
    lines = obj.lines_collection[filepath]
    found: list[str] = []
    index = obj.lineno - 2  # the line above, 0-based
    while index >= 0 and lines[index].strip().startswith("#:"):
        found.insert(0, lines[index].strip()[2:].strip())
        index -= 1
    return " ".join(found) or None


def inherited_doc(obj: griffe.Object) -> griffe.Docstring | None:
    """The docstring of the member ``obj`` overrides in a base class, if any."""
    parent = obj.parent
    if not isinstance(obj, griffe.Attribute) or not isinstance(parent, griffe.Class):
        return None
    try:
        bases = parent.mro()
    except Exception:  # noqa: BLE001 - a base outside the package: nothing to inherit
        return None
    for base in bases:
        member = base.members.get(obj.name)
        if member is None or member is obj:
            continue
        docstring = member.docstring
        if docstring is None:
            text = comment_doc(member)
            docstring = griffe.Docstring(text, parent=member) if text else None
        if docstring is not None:
            return docstring
    return None


class SphinxRoles(griffe.Extension):
    """Rewrites the Sphinx roles of every docstring in the loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        seen: set[int] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if obj.docstring is None:
                text = comment_doc(obj)
                if text is not None:
                    obj.docstring = griffe.Docstring(text, parent=obj)
                else:
                    inherited = inherited_doc(obj)
                    if inherited is not None:
                        obj.docstring = griffe.Docstring(inherited.value, parent=obj)
            if obj.docstring is not None:
                obj.docstring.value = rewrite(obj.docstring.value, obj)
            stack.extend(
                member for member in obj.members.values() if not isinstance(member, griffe.Alias)
            )
