"""Package-level promises: light import, README commands in sync with CI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_light():
    code = (
        "import sys, latentopt, latentopt.ir, latentopt.backends.integer; "
        "heavy = [m for m in ('torch', 'brevitas', 'concrete', 'sklearn', 'onnx') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_lazy_estimators_exported():
    import latentopt

    assert latentopt.QuantizedMLPClassifier.__name__ == "QuantizedMLPClassifier"
    assert "QuantizedMLPRegressor" in dir(latentopt)


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    assert len(blocks) >= 2
    run_cmd, test_cmd = blocks[0].strip(), blocks[1].strip()
    assert "python -m latentopt" in run_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
    assert "pytest" in test_cmd


def test_ruff_clean():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "latentopt", "tests",
                          "benchmarks"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_clean():
    """mypy ([tool.mypy] in pyproject.toml) is clean on the whole package."""
    out = subprocess.run([sys.executable, "-m", "mypy", "latentopt"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
