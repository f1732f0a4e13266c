"""scripts/mkdocs_hooks.py: the two fixes to the built pages (roles dropped, table code
spans breakable at . ( , = / only)."""

from __future__ import annotations

import importlib.util

from tests.helpers import ROOT


def _hooks():
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "scripts/mkdocs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sphinx_roles_before_a_code_span_are_dropped_and_other_colons_kept():
    hooks = _hooks()
    html = "<p>see :mod:<code>tripletlab.losses</code> and :func:<code>get</code>; ratio 1:2</p>"
    assert hooks.strip_roles(html) == (
        "<p>see <code>tripletlab.losses</code> and <code>get</code>; ratio 1:2</p>"
    )


def test_table_code_spans_break_after_separators_only_and_entities_stay_whole():
    hooks = _hooks()
    cell = "<td><code>f(x=&quot;a.b&quot;, y)</code> and <code>max_train</code></td>"
    assert hooks.break_points(cell) == (
        "<td><code>f(<wbr>x=<wbr>&quot;a.<wbr>b&quot;,<wbr> y)</code>"
        " and <code>max_train</code></td>"
    )
    # Outside a table cell nothing changes; a second pass adds nothing.
    paragraph = "<p><code>dataset.root</code></p>"
    assert hooks.break_points(paragraph) == paragraph
    once = hooks.break_points('<td align="left"><code>a.b/c</code></td>')
    assert once == '<td align="left"><code>a.<wbr>b/<wbr>c</code></td>'
    assert hooks.break_points(once) == once


def test_mkdocs_runs_the_hooks():
    assert "scripts/mkdocs_hooks.py" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
