"""Draw the layers of latentopt, from its source, as docs/images/layers.svg.

Run ``python docs/_ext/draw_layers.py`` after moving modules; ``tests/test_architecture.py``
fails while the committed drawing differs from what the code gives.  Each box is a
subpackage with its modules, placed by dependency depth (``ir`` at the bottom); each arrow
is an import between subpackages (read by ``tests/import_graph.py``, lazy imports
included).  The lowering schedule and the modules that import its step types (its
renderers) are highlighted.
"""

from __future__ import annotations

import sys
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "images" / "layers.svg"
sys.path.insert(0, str(ROOT / "tests"))

import import_graph as g  # noqa: E402

WIDTH, MARGIN, GAP, ROW_GAP, LINE, TITLE = 960, 20, 16, 46, 15, 24
SCHEDULE = "latentopt.ir.schedule"


def _depths(graph: dict[str, set[str]]) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(p: str) -> int:
        if p not in depth:
            depth[p] = 1 + max((visit(d) for d in graph[p]), default=-1)
        return depth[p]

    for p in graph:
        visit(p)
    return depth


def _modules_of(package: str) -> list[str]:
    prefix = f"latentopt.{package}."
    return sorted(m[len(prefix):] for m in g.MODULES if m.startswith(prefix))


def render() -> str:
    """The SVG text of the layers drawing."""
    graph = g.package_graph()
    depth = _depths(graph)
    rows = [sorted(p for p in graph if depth[p] == d) for d in range(max(depth.values()), -1, -1)]
    # the renderers: modules that import the schedule's step types
    renders = {m for m in g.MODULES if f"{SCHEDULE}.LookupStep" in g.imported_names(m)}
    renders.add(SCHEDULE)
    boxes: dict[str, tuple[float, float, float, float]] = {}
    parts: list[str] = []
    y = MARGIN + 22.0
    for row in rows:
        w = (WIDTH - 2 * MARGIN - GAP * (len(row) - 1)) / len(row)
        h = TITLE + LINE * max(-(-len(_modules_of(p)) // 2) for p in row) + 8
        for i, p in enumerate(row):
            boxes[p] = (MARGIN + i * (w + GAP), y, w, h)
        y += h + ROW_GAP
    height = y - ROW_GAP + MARGIN + LINE
    def order(p: str) -> tuple[float, str]:
        return (boxes[p][0], p)

    incoming = {d: sorted((p for p in graph if d in graph[p]), key=order) for d in graph}
    for p, deps in sorted(graph.items()):  # arrows first: behind the boxes
        x0, y0, w0, h0 = boxes[p]
        out = sorted(deps, key=order)
        for k, d in enumerate(out):
            x1, y1, w1, _ = boxes[d]
            j = incoming[d].index(p)
            xa = x0 + w0 * (k + 1) / (len(out) + 1)
            xb = x1 + w1 * (j + 1) / (len(incoming[d]) + 1)
            parts.append(f'<line x1="{xa:.0f}" y1="{y0 + h0:.0f}" x2="{xb:.0f}" '
                         f'y2="{y1 - 2:.0f}" class="dep" marker-end="url(#arrow)"/>')
    for p, (x, y0, w, h) in sorted(boxes.items()):
        parts.append(f'<rect x="{x:.0f}" y="{y0:.0f}" width="{w:.0f}" height="{h:.0f}" '
                     f'rx="6" class="pkg"/>')
        parts.append(f'<text x="{x + 8:.0f}" y="{y0 + 17:.0f}" class="title">'
                     f'latentopt.{escape(p)}</text>')
        mods = _modules_of(p)
        half = -(-len(mods) // 2)
        for k, m in enumerate(mods):
            col, line = divmod(k, half)
            cls = "mod hot" if f"latentopt.{p}.{m}" in renders else "mod"
            parts.append(f'<text x="{x + 10 + col * w / 2:.0f}" '
                         f'y="{y0 + TITLE + 10 + line * LINE:.0f}" class="{cls}">'
                         f'{escape(m)}</text>')
    legend = ("Arrows: imports between subpackages (read from the source, lazy imports "
              "included). Red: ir.schedule and the renderers of its steps.")
    parts.append(f'<text x="{MARGIN}" y="{height - MARGIN / 2:.0f}" class="legend">'
                 f'{escape(legend)}</text>')
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" font-family="sans-serif">\n'
        '<title>latentopt layers: subpackages, their modules and imports</title>\n'
        '<style>.pkg{fill:#eef1fb;stroke:#3f51b5;stroke-width:1.5}'
        '.title{font-size:14px;font-weight:bold;fill:#1a237e}'
        '.mod{font-size:11.5px;fill:#333}.hot{font-weight:bold;fill:#c62828}'
        '.dep{stroke:#7986cb;stroke-width:1.3;opacity:0.8}'
        '.legend{font-size:11.5px;fill:#555}</style>\n'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
        'fill="#7986cb"/></marker></defs>\n'
        f'<text x="{MARGIN}" y="{MARGIN + 4}" class="title">Data flows one way: each '
        'layer imports only the layers below it</text>\n'
    )
    return head + "\n".join(parts) + "\n</svg>\n"


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(ROOT)}")
