"""Griffe extension for latentopt's API reference (static analysis only, nothing imported).

* Class docstrings built by concatenation (``__doc__ = "..." + _COMMON_DOC + "..."``, as
  the MLP estimators do to share their parameter list) are evaluated from the source:
  string literals and module-level string constants joined with ``+``.
* Sphinx roles left in docstrings (``:class:`~pkg.Name```, ``:meth:`fit```) become
  Markdown code spans (``Name``, ``fit``): mkdocstrings renders Markdown, not reST.
* Powers written ``2**24`` outside code spans are quoted as code, else Markdown reads
  ``**`` as bold.
* Doctest blocks outside an "Examples" section are fenced as code (Markdown would read
  ``>>>`` as nested quotes).
"""

from __future__ import annotations

import ast
import inspect
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|data|attr|exc|obj|const|ref):`([^`]+)`")


def _role_text(match: re.Match[str]) -> str:
    target = match.group(1).strip()
    explicit = re.fullmatch(r"(.+?)\s*<[^>]+>", target)
    if explicit:
        return f"`{explicit.group(1)}`"
    if target.startswith("~"):
        target = target[1:].rsplit(".", 1)[-1]
    return f"`{target.lstrip('.')}`"


_CODE_SPAN = re.compile(r"(`+).*?\1")
_POWER = re.compile(r"\b(\w+(?:\.\w+)*\*\*(?:\([^()\s]*\)|\w+(?:\.\w+)*))")


def _protect_powers(line: str) -> str:
    """Put ``2**24``-style powers outside code spans into code spans (else ``**`` is bold)."""
    out, pos = [], 0
    for span in _CODE_SPAN.finditer(line):
        out.append(_POWER.sub(r"`\1`", line[pos:span.start()]))
        out.append(span.group(0))
        pos = span.end()
    out.append(_POWER.sub(r"`\1`", line[pos:]))
    return "".join(out)


def markdownify(text: str) -> str:
    """Markdown-friendly docstring text.

    reST roles become code spans, powers are quoted, and doctest blocks (``>>>`` up to
    the next blank line) are fenced as ``pycon`` code wherever they are: Markdown would
    read ``>>>`` as nested quotes.
    """
    text = _ROLE.sub(_role_text, text)
    lines: list[str] = []
    fenced = doctest = False
    indent = ""
    for line in text.split("\n"):
        stripped = line.lstrip()
        if doctest and not stripped:
            lines.append(f"{indent}```")
            doctest = False
        elif not fenced and not doctest and stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            if lines and lines[-1].strip():
                lines.append("")
            lines.append(f"{indent}```pycon")
            doctest = True
        elif stripped.startswith("```") and not doctest:
            fenced = not fenced
        elif not fenced and not doctest:
            line = _protect_powers(line)
        lines.append(line)
    if doctest:
        lines.append(f"{indent}```")
    return "\n".join(lines)


def _eval_str(expr: ast.expr, module: griffe.Module) -> str | None:
    """Value of a static string expression, or None when it is not one."""
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return expr.value
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        left, right = _eval_str(expr.left, module), _eval_str(expr.right, module)
        return None if left is None or right is None else left + right
    if isinstance(expr, ast.Name) and expr.id in module.members:
        member = module.members[expr.id]
        if isinstance(member, griffe.Attribute) and member.value is not None:
            try:
                value = ast.literal_eval(str(member.value))
            except (ValueError, SyntaxError):
                return None
            return value if isinstance(value, str) else None
    return None


class LatentoptDocs(griffe.Extension):
    """See the module docstring."""

    def on_class_members(self, *, node: Any, cls: griffe.Class, agent: Any, **kwargs: Any) -> None:
        if cls.docstring is not None or not isinstance(node, ast.ClassDef):
            return
        for stmt in node.body:
            if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                    and isinstance(stmt.targets[0], ast.Name) and stmt.targets[0].id == "__doc__"):
                text = _eval_str(stmt.value, cls.module)
                if text is not None:
                    cls.docstring = griffe.Docstring(
                        inspect.cleandoc(text), lineno=stmt.lineno, parent=cls,
                        parser=agent.docstring_parser, parser_options=agent.docstring_options)
                    cls.del_member("__doc__")
                return

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        # after the whole package is loaded: every docstring exists by now
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = markdownify(obj.docstring.value)


def _walk(obj: griffe.Object):  # type: ignore[no-untyped-def]
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)
