"""``latentopt serve`` refuses bad arguments with one line, before serving anything."""

from __future__ import annotations

import shutil

import pytest

from latentopt.deploy.cli import main

pytestmark = pytest.mark.fhe


def test_bad_artefacts_tokens_and_names_end_in_one_line(deployed, tmp_path, capsys):
    wine = deployed["root"] / "wine"
    store = ["--key-store", str(tmp_path / "keys"), "--workers", "1"]
    broken = tmp_path / "broken"
    shutil.copytree(wine, broken)
    (broken / "server.zip").write_bytes((wine / "server.zip").read_bytes()[:200])
    cases = [
        ([str(tmp_path / "nowhere")], "no server.zip"),
        ([str(broken)], "not a latentopt FHE artefact"),
        ([str(wine), "--token-file", str(tmp_path / "missing")], "No such file"),
        ([str(wine), "--token", "short"], "at least 16 characters"),
        ([str(wine), f"wine={broken}"], "two models named 'wine'"),
    ]
    for args, text in cases:
        with pytest.raises(SystemExit) as exc:
            main([*args, *store])
        message = str(exc.value.code)
        assert message.startswith("latentopt serve: ") and text in message, message
        assert "\n" not in message
