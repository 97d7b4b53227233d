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


def test_a_program_concrete_cannot_load_is_named_at_start_up(deployed, tmp_path):
    """A server.zip whose checksums match but whose program.zip concrete cannot read (a
    re-signed artefact): start-up names that, not "killed or ran out of memory"."""
    import hashlib
    import json
    import zipfile

    from deploy_support import Server

    wine = deployed["root"] / "wine"
    bad = tmp_path / "resigned"
    shutil.copytree(wine, bad)
    with zipfile.ZipFile(wine / "server.zip") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["program.zip"] = b"not a zip archive"
    manifest = json.loads(members.pop("manifest.json"))
    manifest["sha256"] = {k: hashlib.sha256(v).hexdigest() for k, v in members.items()}
    with zipfile.ZipFile(bad / "server.zip", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("manifest.json", json.dumps(manifest))
    with pytest.raises(RuntimeError, match="server exited") as exc:
        Server([str(bad)], tmp_path / "keys", log=tmp_path / "log", workers=1)
    log = str(exc.value)
    assert "could not load the models" in log and "program.zip" in log
    assert "ran out of memory" not in log
