"""MkDocs hooks (mkdocs.yml ``hooks:``): two fixes to the built pages that Markdown cannot say.

- Docstrings are Sphinx-style, and mkdocstrings renders a role such as ``:mod:`x``` as the
  text ":mod:" before the code span; the role is dropped, the code span kept.
- A code span in a table cell (configuration keys, call signatures) may break after ``.``,
  ``(``, ``,``, ``=`` or ``/``: a ``<wbr>`` there lets the browser wrap ``dataset.max_train``
  as ``dataset.`` / ``max_train`` instead of in the middle of a word (docs/stylesheets/extra.css
  no longer breaks words anywhere).
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:mod|func|class|meth|attr|data|exc|obj|py:\w+):(?=<code)")
_CELL = re.compile(r"<td[^>]*>.*?</td>", re.DOTALL)
_CODE = re.compile(r"(<code>)(.*?)(</code>)", re.DOTALL)
_BREAK_AFTER = re.compile(r"([./(,=])(?!<wbr>)")


def strip_roles(html: str) -> str:
    """':func:<code>get</code>' -> '<code>get</code>'."""
    return _ROLE.sub("", html)


def break_points(html: str) -> str:
    """A ``<wbr>`` after . ( , = / inside every code span of a table cell. Escaped text only
    holds entities made of letters, '#', digits and ';', so no entity is split."""

    def code(match: re.Match) -> str:
        return match[1] + _BREAK_AFTER.sub(r"\1<wbr>", match[2]) + match[3]

    return _CELL.sub(lambda cell: _CODE.sub(code, cell[0]), html)


def on_page_content(html: str, **kwargs) -> str:
    return break_points(strip_roles(html))
