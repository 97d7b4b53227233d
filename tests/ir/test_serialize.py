"""Tests of latentopt.ir.serialize: round trips, corrupt and foreign files, pickle."""

from __future__ import annotations

import io
import json
import pathlib
import pickle
import zipfile

import numpy as np
import pytest

from latentopt.ir import Circuit, CircuitFormatError, Interval, load, save
from latentopt.ir.serialize import FORMAT_NAME, FORMAT_VERSION, from_bytes, to_bytes


@pytest.fixture
def rich(make_three_layer, reference_run, quantized_inputs) -> Circuit:
    """Three layers, rounding, per-channel functions, calibration and metadata."""
    c = make_three_layer().with_rounding([2, 1], method="approximate")
    rng = np.random.default_rng(0)
    values = reference_run(c, quantized_inputs(c, rng, 50))
    return c.with_calibration(values).replace(
        metadata={"source": "test", "nested": {"a": [1, 2.5, None], "b": True}, "n": 3})


@pytest.fixture
def assert_same(reference_run, quantized_inputs):
    """Structure, calibration, metadata, read-only arrays and integer outputs all equal."""

    def check(a: Circuit, b: Circuit) -> None:
        assert a.same_as(b) and b.same_as(a)
        assert a.metadata == b.metadata
        if a.calibration is None:
            assert b.calibration is None
        else:
            assert a.calibration.keys() == b.calibration.keys()
            for k, iv in a.calibration.items():
                assert iv.lo.tolist() == b.calibration[k].lo.tolist()
                assert iv.hi.tolist() == b.calibration[k].hi.tolist()
        for na, nb in zip(a.nodes, b.nodes):
            for field in ("weight", "bias", "scale", "zero_point"):
                va, vb = getattr(na, field, None), getattr(nb, field, None)
                if isinstance(va, np.ndarray):
                    assert va.dtype == vb.dtype and not vb.flags.writeable
        rng = np.random.default_rng(5)
        q = quantized_inputs(a, rng, 100)
        ra, rb = reference_run(a, q), reference_run(b, q)
        assert ra.keys() == rb.keys()
        assert all(np.array_equal(ra[k], rb[k]) for k in ra)

    return check


def _rewrite(data: bytes, manifest=None, arrays: bytes | None = None) -> bytes:
    """Rebuild an archive, optionally replacing its members."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        m = json.loads(zf.read("manifest.json"))
        a = zf.read("arrays.npz")
    if manifest is not None:
        m = manifest(m)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("manifest.json", json.dumps(m))
        zf.writestr("arrays.npz", a if arrays is None else arrays)
    return out.getvalue()


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("kind", ["str", "pathlib"])
def test_round_trip_path(rich, tmp_path, kind, assert_same):
    path = tmp_path / "model.lo"
    save(rich, str(path) if kind == "str" else path)
    assert path.exists() and not pathlib.Path(f"{path}.tmp").exists()
    assert zipfile.is_zipfile(path)
    assert_same(rich, load(str(path) if kind == "str" else path))


def test_round_trip_bytesio(rich, assert_same):
    buf = io.BytesIO()
    save(rich, buf)
    buf.seek(0)
    assert_same(rich, load(buf))


def test_circuit_methods_and_overwrite(rich, tmp_path, make_three_layer, assert_same):
    path = tmp_path / "c.lo"
    make_three_layer().save(path)
    rich.save(path)  # overwrites atomically
    assert_same(rich, Circuit.load(path))


def test_round_trip_without_calibration_or_metadata(make_three_layer, assert_same):
    c = make_three_layer().replace(metadata={})
    back = from_bytes(to_bytes(c))
    assert back.calibration is None and back.metadata == {}
    assert_same(c, back)


def test_bytes_are_deterministic_in_content(rich):
    a, b = to_bytes(rich), to_bytes(from_bytes(to_bytes(rich)))
    with zipfile.ZipFile(io.BytesIO(a)) as za, zipfile.ZipFile(io.BytesIO(b)) as zb:
        assert json.loads(za.read("manifest.json")) == json.loads(zb.read("manifest.json"))
        assert za.read("arrays.npz") == zb.read("arrays.npz")


def test_manifest_contents(rich):
    with zipfile.ZipFile(io.BytesIO(to_bytes(rich))) as zf:
        assert set(zf.namelist()) == {"manifest.json", "arrays.npz"}
        m = json.loads(zf.read("manifest.json"))
    assert m["format"] == FORMAT_NAME and m["format_version"] == FORMAT_VERSION
    assert m["n_features"] == 3 and len(m["nodes"]) == len(rich)
    assert m["calibration"]["fc1"] == rich.calibration["fc1"].to_list()


def test_pickle_round_trip(rich, assert_same):
    back = pickle.loads(pickle.dumps(rich))
    assert isinstance(back, Circuit)
    assert_same(rich, back)
    assert back.report().layers == rich.report().layers


# --------------------------------------------------------------- bad files
def test_truncated_files(rich):
    data = to_bytes(rich)
    for n in list(range(0, len(data), max(1, len(data) // 60))) + [len(data) - 1]:
        with pytest.raises(CircuitFormatError):
            from_bytes(data[:n])


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes(seed):
    data = np.random.default_rng(seed).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    with pytest.raises(CircuitFormatError, match="not a latentopt circuit file"):
        from_bytes(data)


def test_not_a_zip(tmp_path):
    path = tmp_path / "model.json"
    path.write_text('{"format": "latentopt.circuit"}')
    with pytest.raises(CircuitFormatError, match="bad archive"):
        load(path)
    with pytest.raises(CircuitFormatError):
        from_bytes(b"")


def test_zip_without_members():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("other.txt", "hello")
    with pytest.raises(CircuitFormatError, match="missing manifest or arrays"):
        from_bytes(out.getvalue())


def test_flipped_bytes_never_escape_as_other_errors(rich):
    """Any damage gives CircuitFormatError (or, in unchecked zip header bytes, the
    same circuit): never zlib.error, NotImplementedError, ..."""
    data = to_bytes(rich)
    rng = np.random.default_rng(0)
    errors = 0
    for _ in range(400):
        d = bytearray(data)
        for pos in rng.integers(0, len(d), int(rng.integers(1, 4))):
            d[pos] ^= int(rng.integers(1, 256))
        try:
            back = from_bytes(bytes(d))
        except CircuitFormatError:
            errors += 1
        else:
            assert back.same_as(rich)
    assert errors > 300


def test_tampered_arrays_detected(rich, assert_same):
    data = to_bytes(rich)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        with np.load(io.BytesIO(zf.read("arrays.npz"))) as npz:
            arrays = {k: npz[k] for k in npz.files}
    key = next(k for k in arrays if k.endswith("weight"))
    arrays[key] = arrays[key] + 1
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with pytest.raises(CircuitFormatError, match="checksum"):
        from_bytes(_rewrite(data, arrays=buf.getvalue()))
    # the untouched rewrite still loads: the check is on content, not container
    assert_same(rich, from_bytes(_rewrite(data)))


def test_wrong_format_name(rich):
    data = _rewrite(to_bytes(rich), manifest=lambda m: dict(m, format="onnx"))
    with pytest.raises(CircuitFormatError, match="format 'onnx'"):
        from_bytes(data)
    data = _rewrite(to_bytes(rich), manifest=lambda m: [1, 2])
    with pytest.raises(CircuitFormatError, match="not a latentopt circuit file"):
        from_bytes(data)


def test_newer_version_has_helpful_message(rich):
    data = _rewrite(to_bytes(rich), manifest=lambda m: dict(m, format_version=FORMAT_VERSION + 1))
    with pytest.raises(CircuitFormatError) as info:
        from_bytes(data)
    msg = str(info.value)
    assert f"version {FORMAT_VERSION + 1}" in msg and "upgrade latentopt" in msg
    assert f"1..{FORMAT_VERSION}" in msg


@pytest.mark.parametrize("version", [0, -1, "1", None, 1.5])
def test_invalid_versions(rich, version):
    data = _rewrite(to_bytes(rich), manifest=lambda m: dict(m, format_version=version))
    with pytest.raises(CircuitFormatError, match="not supported"):
        from_bytes(data)


def test_invalid_manifest_json(rich):
    data = to_bytes(rich)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(out, "w") as zout:
        zout.writestr("manifest.json", b"{not json")
        zout.writestr("arrays.npz", zin.read("arrays.npz"))
    with pytest.raises(CircuitFormatError, match="corrupt"):
        from_bytes(out.getvalue())


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: dict(m, nodes=m["nodes"][:-1]),  # no Dequantize at the end
        lambda m: dict(m, n_features=7),  # widths no longer match
        lambda m: {k: v for k, v in m.items() if k != "nodes"},
        lambda m: dict(m, nodes=[dict(m["nodes"][0], op="conv")] + m["nodes"][1:]),
        lambda m: dict(m, nodes=["junk"] + m["nodes"][1:]),
        lambda m: dict(m, calibration={"fc1": [[5], [1]]}),  # lo > hi
    ],
)
def test_invalid_content(rich, edit):
    with pytest.raises(CircuitFormatError, match="invalid circuit file content"):
        from_bytes(_rewrite(to_bytes(rich), manifest=edit))


def test_format_error_is_value_error():
    assert issubclass(CircuitFormatError, ValueError)


def test_calibration_round_trip_exact_large_values(make_three_layer):
    c = make_three_layer()
    big = Interval([-(2**61)] * 4, [2**61 - 1] * 4)
    back = from_bytes(to_bytes(c.replace(calibration={"fc1": big})))
    assert back.calibration["fc1"].to_list() == big.to_list()
