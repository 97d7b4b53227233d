"""Generate ``docs/api-table.md``: the estimators' public methods, signatures and attributes.

Run ``python docs/_ext/api_table.py`` after changing a public method; the test suite
(``tests/sklearn/test_api.py``) fails while the page differs from what this script
writes, and while a method present on several estimators has different signatures.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "api-table.md"

ESTIMATORS = (
    "latentopt.sklearn.mlp.QuantizedMLPClassifier",
    "latentopt.sklearn.mlp.QuantizedMLPRegressor",
    "latentopt.sklearn.torch_model.QuantizedTorchModel",
    "latentopt.sklearn.torch_qat.QuantizedTorchClassifier",
    "latentopt.sklearn.torch_qat.QuantizedTorchRegressor",
)
#: Methods every estimator has (with one signature).
CORE_METHODS = ("fit", "predict", "score", "compile", "keygen", "to_onnx",
                "save_deployment", "bit_width_report", "get_params", "set_params")
#: Functions that build a ``QuantizedTorchModel`` and compile it with compile's options.
BUILDERS = ("latentopt.sklearn.torch_model.compile_torch_model",
            "latentopt.sklearn.torch_model.compile_brevitas_qat_model")


def _load(path: str) -> Any:
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def estimator_classes() -> list[type]:
    return [_load(path) for path in ESTIMATORS]


def _skipped(name: str) -> bool:
    from latentopt.sklearn.deprecated import DEPRECATED_NAMES

    deprecated = {old.removesuffix("()") for old in DEPRECATED_NAMES}
    # scikit-learn's metadata-routing methods are generated, not part of this API
    routing = name == "get_metadata_routing" or re.fullmatch(r"set_\w+_request", name)
    return name.startswith("_") or name in deprecated or bool(routing)


def format_signature(fn: Any) -> str:
    """``name(params) -> return`` with annotations as written in the source."""
    sig = inspect.signature(fn)
    parts, kw_marker = [], False
    for p in list(sig.parameters.values())[1:]:  # drop self
        text = p.name
        if p.kind is p.VAR_POSITIONAL:
            text, kw_marker = "*" + text, True
        elif p.kind is p.VAR_KEYWORD:
            text = "**" + text
        elif p.kind is p.KEYWORD_ONLY and not kw_marker:
            parts.append("*")
            kw_marker = True
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}" if p.annotation is not p.empty else f"={p.default!r}"
        parts.append(text)
    ret = "" if sig.return_annotation is sig.empty else f" -> {_annotation(sig.return_annotation)}"
    return f"{fn.__name__}({', '.join(parts)}){ret}"


def _annotation(a: Any) -> str:
    return a if isinstance(a, str) else inspect.formatannotation(a)


def public_methods(cls: type) -> dict[str, str]:
    """Public method name -> formatted signature."""
    out = {}
    for name in sorted(dir(cls)):
        if _skipped(name):
            continue
        member = inspect.getattr_static(cls, name)
        if isinstance(member, (staticmethod, classmethod)) or not inspect.isfunction(member):
            continue
        out[name] = format_signature(getattr(cls, name))
    return out


def _summary(cls: type, name: str) -> str:
    """First paragraph of the docstring, reST roles as code spans."""
    doc = inspect.getdoc(getattr(cls, name)) or ""
    text = doc.split("\n\n")[0].replace("\n", " ")
    return re.sub(r":(?:py:)?\w+:`~?([^`]+)`", lambda m: f"`{m.group(1).split('.')[-1]}`", text)


def fitted_attributes(cls: type) -> list[str]:
    """Names listed in the "Attributes" section of the class docstring."""
    doc = cls.__doc__ or ""
    match = re.search(r"\n\s*Attributes\n\s*-+\n(.*)", doc, flags=re.S)
    if match is None:
        return []
    names: list[str] = []
    for line in match.group(1).splitlines():
        m = re.match(r"^    (\w[\w, ]*?) : ", line) or re.match(r"^    (\w+(?:, \w+)*)$", line)
        if m:
            names.extend(n.strip() for n in m.group(1).split(","))
    return names


def builder_options() -> dict[str, dict[str, Any]]:
    """Default of every compile option, per builder and for ``compile`` itself."""
    from latentopt.sklearn.base import QuantizedEstimatorBase

    compile_sig = inspect.signature(QuantizedEstimatorBase.compile)
    options = [p for p in compile_sig.parameters.values() if p.kind is p.KEYWORD_ONLY]
    table: dict[str, dict[str, Any]] = {}
    for path in ("compile", *BUILDERS):
        fn = QuantizedEstimatorBase.compile if path == "compile" else _load(path)
        params = inspect.signature(fn).parameters
        table[path.rsplit(".", 1)[-1]] = {
            p.name: params[p.name].default for p in options if p.name in params}
    return table


def render() -> str:
    classes = estimator_classes()
    methods = [public_methods(cls) for cls in classes]
    names = sorted(set().union(*methods), key=lambda n: (n not in CORE_METHODS, n))
    head = " | ".join(f"`{c.__name__}`" for c in classes)
    lines = [
        "# API table",
        "",
        "The public methods of the estimators, generated from the code by",
        "`python docs/_ext/api_table.py` (`tests/sklearn/test_api.py` fails when this page",
        "is out of date, and when a method has different signatures on different",
        "estimators).  The shared methods come from",
        "`latentopt.sklearn.base.QuantizedEstimatorBase`; scikit-learn's metadata-routing",
        "methods (`set_*_request`) are left out.  Each method is documented in the",
        "[API reference](api/estimators.md).",
        "",
        "## Methods",
        "",
        f"| method | {head} |",
        "|---|" + "---|" * len(classes),
    ]
    for name in names:
        cells = " | ".join("yes" if name in m else "-" for m in methods)
        lines.append(f"| [`{name}`](#{name}) | {cells} |")
    from latentopt.sklearn.base import QuantizedEstimatorBase

    lines += ["", "## Signatures", ""]
    for name in names:
        owner = next(c for c, m in zip(classes, methods) if name in m)
        if name in vars(QuantizedEstimatorBase):  # the shared method's own docstring
            owner = QuantizedEstimatorBase
        sig = next(m[name] for m in methods if name in m)
        lines += [f"### {name}", "", "```python", sig, "```", "", _summary(owner, name), ""]
    attrs = [fitted_attributes(cls) for cls in classes]
    every = list(dict.fromkeys(a for names_ in attrs for a in names_))
    lines += ["## Fitted attributes", "",
              "From the \"Attributes\" section of each class's docstring.", "",
              f"| attribute | {head} |", "|---|" + "---|" * len(classes)]
    for a in every:
        lines.append(f"| `{a}` | " + " | ".join("yes" if a in s else "-" for s in attrs) + " |")
    options = builder_options()
    lines += ["", "## Compile options", "",
              "The keyword options of `compile` and their defaults; the torch-model",
              "builders take the FHE options with the same defaults (their `verbose` is",
              "the built model's).", "",
              "| option | " + " | ".join(f"`{k}`" for k in options) + " |",
              "|---|" + "---|" * len(options)]
    for opt in options["compile"]:
        cells = " | ".join(f"`{v[opt]!r}`" if opt in v else "-" for v in options.values())
        lines.append(f"| `{opt}` | {cells} |")
    from latentopt.sklearn.deprecated import DEPRECATED_NAMES

    lines += ["", "## Deprecated names", "",
              "Still working, with a `FutureWarning`:", "", "| old | new |", "|---|---|"]
    lines += [f"| `{old}` | `{new}` |" for old, new in DEPRECATED_NAMES.items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    sys.path.insert(0, str(ROOT))
    PAGE.write_text(render())
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
