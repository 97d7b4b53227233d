"""The documentation site builds with strict warnings, and every page it lists exists.

``mkdocs build --strict`` fails on a missing page, a broken link or anchor, and any
docstring the API reference cannot parse (griffe warnings).  The griffe extension in
``docs/_ext`` turns reST roles and doctest blocks of the docstrings into Markdown.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _nav_pages(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, list):
        return [p for item in node for p in _nav_pages(item)]
    if isinstance(node, dict):
        return [p for value in node.values() for p in _nav_pages(value)]
    return []


def _config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_every_nav_page_exists():
    config = _config()
    assert config["strict"] is True
    pages = _nav_pages(config["nav"])
    assert len(pages) >= 20
    docs = ROOT / config.get("docs_dir", "docs")
    missing = [p for p in pages if not (docs / p).is_file()]
    assert not missing, f"nav pages missing from docs/: {missing}"
    assert len(set(pages)) == len(pages), "a page is listed twice in the nav"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # mkdocs-material's banner
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_strict_build_renders_every_page(site: Path):
    for page in _nav_pages(_config()["nav"]):
        html = site / page.replace(".md", "/index.html").replace("index/index.html", "index.html")
        assert html.is_file(), page


def test_api_reference_is_generated_from_docstrings(site: Path):
    estimators = (site / "api" / "estimators" / "index.html").read_text()
    # the estimators' docstrings are assembled by concatenation: read statically
    assert "Multi-layer perceptron classifier trained with quantization-aware" in estimators
    assert "hidden_layer_sizes" in estimators and "fhe_mode" in estimators
    assert re.search(r'id="latentopt\.sklearn\.mlp\.QuantizedMLPClassifier\.compile"',
                     estimators)
    for page in ("estimators", "search", "ir", "backends", "prune"):
        html = (site / "api" / page / "index.html").read_text()
        assert ":class:`" not in html and ":meth:`" not in html, page  # roles converted
        assert "<blockquote>" not in html, page  # doctest blocks fenced, not quotes


def _extension():
    path = ROOT / "docs" / "_ext" / "latentopt_griffe.py"
    spec = importlib.util.spec_from_file_location("latentopt_griffe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docstring_markdownify():
    md = _extension().markdownify
    text = "See :class:`~latentopt.ir.Circuit` and :meth:`fit`, below 2**24.\n\n>>> 2**3\n8\n"
    out = md(text)
    assert out.startswith("See `Circuit` and `fit`, below `2**24`.")
    assert "```pycon\n>>> 2**3\n8\n```" in out
