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
    from latentopt.backends.fhe_deploy import manifest_digest

    manifest["manifest_sha256"] = manifest_digest(manifest)
    with zipfile.ZipFile(bad / "server.zip", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("manifest.json", json.dumps(manifest))
    with pytest.raises(RuntimeError, match="server exited") as exc:
        Server([str(bad)], tmp_path / "keys", log=tmp_path / "log", workers=1)
    log = str(exc.value)
    assert "could not load the models" in log and "program.zip" in log
    assert "ran out of memory" not in log


@pytest.mark.parametrize("args, text", [
    (["--port", "99999"], "--port: must be a finite number >= 1 and <= 65535"),
    (["--max-store-mb", "nan"], "--max-store-mb: must be a finite number > 0"),
    (["--timeout", "-1"], "--timeout: must be a finite number > 0"),
    (["--max-samples", "0"], "--max-samples: must be a finite number >= 1"),
    (["--log-level", "bogus"], "invalid choice"),
])
def test_bad_numbers_and_levels_are_usage_errors(args, text, capsys):
    """These started the server (or printed a 76-line traceback after start-up)."""
    with pytest.raises(SystemExit) as exc:
        main(["somewhere", *args])
    assert exc.value.code == 2 and text in capsys.readouterr().err


def test_missing_tls_files_and_empty_names_end_in_one_line(tmp_path):
    for args, text in ([["=" + str(tmp_path)], "names no model"],
                       [[str(tmp_path), "--ssl-certfile", "/missing.pem"],
                        "--ssl-certfile /missing.pem: no such file"],
                       # listed by /v1/models but never reached under /v1/models/{name}
                       [["x%2Fy=" + str(tmp_path)], "cannot be part of a URL path"],
                       [["..=" + str(tmp_path)], "cannot be part of a URL path"]):
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert str(exc.value.code).startswith("latentopt serve: ") and text in str(
            exc.value.code)


@pytest.mark.parametrize("args, text", [
    (["--n-encrypted", "-3"], "--n-encrypted: must be a finite number >= 1"),
    (["--timeout", "nan"], "--timeout: must be a finite number > 0"),
    (["--max-accuracy-drop", "-1"], "--max-accuracy-drop: must be a finite number >= 0"),
    (["--seed", "-1"], "--seed: must be a finite number >= 0"),
    (["--n-trials", "x"], "not a number: 'x'"),
])
def test_the_main_jobs_bad_arguments_are_usage_errors(args, text, capsys):
    """``--n-encrypted -3`` ran 140 samples and printed negative seconds per sample."""
    from latentopt.__main__ import main as main_job

    with pytest.raises(SystemExit) as exc:
        main_job(args)
    assert exc.value.code == 2 and text in capsys.readouterr().err


def test_an_unreachable_redis_store_ends_in_one_line(deployed):
    """It failed inside uvicorn's start-up with 57 lines of traceback."""
    pytest.importorskip("redis")
    with pytest.raises(SystemExit) as exc:
        main([str(deployed["root"] / "wine"), "--key-store", "redis://127.0.0.1:1/0",
              "--workers", "1"])
    message = str(exc.value.code)
    assert message.startswith("latentopt serve: key store redis://127.0.0.1:1/0") and (
        "\n" not in message)


def test_a_key_store_that_cannot_be_a_directory_ends_in_one_line(deployed, tmp_path):
    """A path under a regular file failed inside uvicorn's start-up (22 lines)."""
    afile = tmp_path / "afile"
    afile.write_text("")
    for store in (afile / "keys", afile):
        with pytest.raises(SystemExit) as exc:
            main([str(deployed["root"] / "wine"), "--key-store", str(store),
                  "--workers", "1"])
        message = str(exc.value.code)
        assert message.startswith(f"latentopt serve: key store {store}") and (
            "\n" not in message), message


def _check_as(uid: int | None, store: str) -> str:
    """``_check_store(store)`` in this process, or (``uid``) in a forked child that drops
    to that user: its one-line message, or "" when the store is usable."""
    import os
    import signal

    from latentopt.deploy import store as _store  # noqa: F401 - imported before the fork
    from latentopt.deploy.cli import _check_store

    def run() -> str:
        try:
            _check_store(store)
        except SystemExit as exc:
            return str(exc.code)
        return ""

    if uid is None:
        return run()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: another user, the modules already loaded
        os.close(r)
        signal.alarm(30)  # a child stuck on a lock inherited from a thread ends, not hangs
        try:
            os.setgid(uid)
            os.setuid(uid)
            os.write(w, run().encode() or b"-")
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return "" if out == "-" else out or "the child failed"


def test_a_key_store_this_process_cannot_write_ends_in_one_line():
    """A read-only store directory passed the start-up check; the first key upload then
    failed with a 500 and a 40-line traceback, and /readyz still said "ready"."""
    import os
    import shutil
    import tempfile

    uid = None if os.geteuid() != 0 else 65534  # as root: a forked child as nobody
    from pathlib import Path

    base = Path(tempfile.mkdtemp(prefix="latentopt-store-"))
    try:
        base.chmod(0o755)
        readonly, writable = base / "ro", base / "rw"
        readonly.mkdir(mode=0o755)
        writable.mkdir()
        if uid is None:
            readonly.chmod(0o555)
        else:
            os.chown(writable, uid, uid)
        assert _check_as(uid, str(writable)) == ""
        message = _check_as(uid, str(readonly))
        assert message.startswith(f"latentopt serve: key store {readonly}: cannot use it as "
                                  f"a directory") and "not writable" in message, message
        assert "\n" not in message
    finally:
        for p in base.rglob("*"):
            p.chmod(0o755)
        shutil.rmtree(base)
