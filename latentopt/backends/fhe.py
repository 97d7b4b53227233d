"""Compile an IR circuit to TFHE with concrete-python: simulate, keygen, execute.

:class:`FHECircuit` lowers everything between the circuit's quantizer and dequantizer
(see :mod:`.fhe_lowering`) and compiles it as one concrete *module* with two functions
sharing one key set: ``single`` (one sample) and ``batch`` (``batch_size`` samples).
``execute`` sends full batches through ``batch``, where concrete spreads the table
lookups of all samples over the cores, and the remainder through ``single`` (or one
padded batch when that is cheaper), so N samples never pay N times the fixed costs and a
single sample never pays for a padded batch.

Only the ``fhe*`` modules import concrete, lazily (:mod:`.fhe_concrete`): importing
latentopt (or this module) does not.

Examples
--------
>>> import numpy as np
>>> from latentopt.ir import Circuit, QuantizeInput, Gemm, TableLookup, Dequantize
>>> from latentopt.ir import QuantActivation
>>> c = Circuit([QuantizeInput("q", ("input",), 1.0, 0, 2, signed=False),
...              Gemm("fc1", ("q",), [[1, -1], [1, 1]]),
...              TableLookup("act", ("fc1",), QuantActivation("relu", 1.0, 1.0, 2)),
...              Gemm("fc2", ("act",), [[1, -1]]), Dequantize("out", ("fc2",), 1.0, 0)],
...             n_features=2)
>>> q = np.array([[a, b] for a in range(4) for b in range(4)])
>>> fc = FHECircuit.compile(c, q, p_error=2**-40, batch_size=4)
>>> fc.simulate(q[:3]).tolist()  # the integers IntegerBackend(c).run_integers gives
[[0], [-1], [-2]]
>>> fc.report["programmable_bootstrap_count"], fc.report["max_tlu_input_bits"]
(2, 3)
>>> c.report().max_tlu_input_bits  # the IR's signed width; centring saves a bit
4

``fc.execute(q)`` does the same under real encryption (keys are generated on first use).
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..ir import Circuit
from ..ir.schedule import check_quantized
from .batching import pad_batch, plan_calls
from .fhe_compile import (
    DEFAULT_GLOBAL_P_ERROR,
    RANGE_MODES,
    auto_batch_size,
    check_options,
    compile_module,
    configuration,
)
from .fhe_concrete import concrete_fhe
from .fhe_deploy import save_deployment
from .fhe_diagnostics import (
    DEFAULT_RANGE_MODE,
    FHEBitWidthError,
    FHECompilationError,
    FHEOverflowError,
    FHEParametersError,
    module_report,
)
from .fhe_lowering import LoweringPlan, build_function, lower
from .integer import IntegerBackend

__all__ = [
    "FHEBitWidthError",
    "FHECircuit",
    "FHECompilationError",
    "FHEOverflowError",
    "FHEParametersError",
    "RANGE_MODES",
    "concrete_fhe",
    "plan_calls",
]

class FHECircuit:
    """A circuit compiled to TFHE; build with :meth:`compile`.

    Attributes
    ----------
    circuit : Circuit
        The IR circuit.
    plan : LoweringPlan
        Offsets and widths of every encrypted value.
    report : dict
        ``layers`` (per layer: ``accumulator_bits`` and ``tlu_input_bits`` as lowered,
        ``rounding_lsbs``, ``tlu_count``, ``pbs``, ``compiled_bits``: the widest encrypted
        integer concrete assigned in the layer), ``max_tlu_input_bits``,
        ``max_bit_width`` (widest encrypted integer), ``programmable_bootstrap_count``
        and ``complexity`` (per sample, known before keygen), ``size_of_*`` (bytes:
        secret, bootstrap, keyswitch, evaluation keys, one input ciphertext),
        ``p_error`` (per lookup) and ``global_p_error`` (per sample) as achieved, the
        requested values, ``input_range``, ``compile_seconds`` and, once keys exist,
        ``keygen_seconds``.
    batch_size : int
        Samples per call of the batched function.

    Pickling keeps the circuit and the few calibration rows concrete needs and compiles
    again on unpickling (about a second); keys are not pickled.
    """

    def __init__(self, circuit: Circuit, plan: LoweringPlan, module: Any, batch_size: int,
                 report: dict[str, Any], verbose: int = 0) -> None:
        self.circuit = circuit
        self.plan = plan
        self.module = module
        self.batch_size = batch_size
        self.report = report
        self.verbose = verbose
        self._functions = module.functions()
        self._recompile: dict[str, Any] = {}
        #: whether the keys have served a run (the first run decompresses them)
        self.warm = False
        # one key generation at a time: two threads' first execute() each generated keys,
        # and one encrypted with keys the other then replaced (wrong rows, no error)
        self._key_lock = threading.RLock()
        # concrete leaves each compiled library in a temporary directory: remove them
        self._cleanup = weakref.finalize(self, remove_library_dirs, module)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self._recompile, circuit=self.circuit, verbose=self.verbose)

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        state.setdefault("parameter_strategy", "precision")  # pickled before the option
        other = FHECircuit.compile(state.pop("circuit"), state.pop("inputset_q"), **state)
        other._cleanup.detach()
        self.__dict__.update(other.__dict__)
        self._cleanup = weakref.finalize(self, remove_library_dirs, self.module)

    # ---------------------------------------------------------------- compile
    @classmethod
    def compile(
        cls,
        circuit: Circuit,
        inputset_q: np.ndarray,
        *,
        p_error: float | None = None,
        global_p_error: float | None = None,
        security_level: int = 128,
        range_mode: str = DEFAULT_RANGE_MODE,
        range_margin: float = 0.0,
        on_overflow: str = "warn",
        batch_size: int | None = None,
        compress: bool = True,
        verbose: int = 0,
        insecure_key_cache: str | Path | None = None,
        concrete_options: dict[str, Any] | None = None,
        parameter_strategy: str = "auto",
    ) -> FHECircuit:
        """Lower and compile ``circuit``.

        Parameters
        ----------
        circuit : Circuit
        inputset_q : int array (n_samples, n_features)
            Quantized calibration inputs (``IntegerBackend(circuit).quantize(X)``).
        p_error, global_p_error : float, optional
            Error probability of each table lookup, or of a whole sample's inference
            (at most one; default: ``global_p_error=1e-5``).  The batched function gets
            the per-lookup error of the single-sample one.
        security_level : {128, 132}
        range_mode : {"calibrated", "worst_case"}
            ``"calibrated"`` (default): bit-widths cover the values reached on
            ``inputset_q`` (as Concrete ML does); inputs far from the calibration data
            may overflow an accumulator and give wrong results, which :meth:`overflows`
            detects (the estimators check every sample they run, see ``on_overflow``).
            ``"worst_case"``: every value gets its worst-case width
            (``circuit.worst_case_ranges()``), so every compiled value provably fits for
            every input the quantizer can produce (it clips): no input can overflow.
            Same cost at the same lookup widths, but after rounding to the same width
            less accurate (``benchmarks/range_modes.py``).
        range_margin : float
            With ``"calibrated"``: widen every calibrated range by this fraction of its
            span on each side (capped at the worst case) and enforce the widths with
            hints, so inputs a little beyond the calibration data do not overflow.
        on_overflow : {"warn", "raise"}
            With ``"calibrated"``: what callers do with samples that would overflow (or lie
            outside the enforced input box, ``report["input_box"]``): warn and go on, or
            raise :class:`FHEOverflowError`.  Stored in the report and the deployment.
        batch_size : int, optional
            Samples per batched call (1 disables batching); default: about 128 lookups in
            the narrowest layer, between 8 and 16 samples.
        compress : bool
            Seeded (compressed) evaluation keys and input ciphertexts: about 4x smaller
            keys and tiny inputs to ship; the server decompresses the keys once (on the
            first run), about a second.
        verbose : int
            0 silent; 1 timings and progress bars; 2 also concrete's own progress.
        insecure_key_cache : path, optional
            **Tests only**: reuse keys from this directory (insecure).
        concrete_options : dict, optional
            Advanced: further ``concrete.fhe.Configuration`` options (e.g.
            ``{"dataflow_parallelize": True}``), overriding latentopt's; used by
            ``benchmarks/fhe_profile.py`` to compare them.
        parameter_strategy : {"auto", "precision", "precision_and_norm2"}
            How concrete's optimizer groups lookups into crypto-parameter sets: by lookup
            width (``"precision"``, concrete's default), or also by the noise growth of
            the linear work before each lookup (``"precision_and_norm2"``: cheaper
            bootstraps for layers with small weights, but more and larger keys).
            ``"auto"`` (default): a circuit with two or more lookup layers of one width
            (layers of other widths are in other partitions already) is compiled both
            ways, and the second kept only when concrete's complexity drops by at least
            :data:`~.fhe_compile.NORM2_MIN_GAIN` (real-MNIST CNN, 272 lookups: 16% less
            complexity, 5.6 s against 6.9 s per sample, 1.5x the key bytes); never for
            a circuit with a residual addition (concrete 2.11's optimizer aborts the
            process on some).  The choice is ``report["parameter_strategy"]``.
        """
        fhe = concrete_fhe()
        check_options(p_error=p_error, global_p_error=global_p_error,
                      security_level=security_level, range_mode=range_mode,
                      range_margin=range_margin, on_overflow=on_overflow,
                      batch_size=batch_size, parameter_strategy=parameter_strategy)
        p_error = None if p_error is None else float(p_error)
        global_p_error = None if global_p_error is None else float(global_p_error)
        security_level = int(security_level)
        t0 = time.perf_counter()
        plan, rows = lower(circuit, inputset_q, range_mode, float(range_margin))
        batch_size = int(auto_batch_size(plan) if batch_size is None else batch_size)
        pieces = {"single": [rows[i : i + 1] for i in range(len(rows))]}
        if batch_size > 1:
            padded = pad_batch(rows, "batch", -(-len(rows) // batch_size) * batch_size)
            pieces["batch"] = [padded[i : i + batch_size]
                               for i in range(0, len(padded), batch_size)]
        n_calls = 1 + (batch_size if batch_size > 1 else 0)  # samples in the whole module
        if p_error is None and global_p_error is None:
            global_p_error = DEFAULT_GLOBAL_P_ERROR
        conf = configuration(fhe, p_error=p_error, global_p_error=global_p_error,
                             security_level=security_level, n_calls=n_calls,
                             compress=compress, verbose=verbose,
                             insecure_key_cache=insecure_key_cache,
                             concrete_options=concrete_options)
        namespace: dict[str, Any] = {"composition": fhe.NotComposable()}
        for name in pieces:
            namespace[name] = fhe.function({"x": "encrypted"})(build_function(plan, fhe, name))
        if verbose:  # large circuits compile for minutes: say so before starting
            print(f"[latentopt] FHE compile of {len(circuit.nodes)} IR nodes, "
                  f"{len(pieces)} function(s) ..." + ("" if verbose >= 2 else
                  " (verbose=2 shows the compiler's progress)"), flush=True)
        module, strategy, active_clipping = compile_module(fhe, plan, namespace, pieces, conf,
                                                           parameter_strategy)
        report = module_report(module, plan.layers, plan.max_tlu_bits, circuit, batch_size,
                               n_calls)
        box = input_box(circuit, inputset_q, range_mode, float(range_margin),
                        report["input_range"])
        report.update(input_box=[box[0].tolist(), box[1].tolist()],
                      input_range=(int(box[0].min()), int(box[1].max())),
                      range_margin=float(range_margin), on_overflow=on_overflow)
        report.update(range_mode=range_mode, security_level=security_level,
                      parameter_strategy=strategy,
                      approximate_active_clipping=active_clipping,
                      p_error_requested=p_error,
                      global_p_error_requested=global_p_error if p_error is None else None,
                      compile_seconds=time.perf_counter() - t0)
        if verbose:
            print(f"[latentopt] FHE compile {report['compile_seconds']:.2f}s: "
                  f"{report['programmable_bootstrap_count']} PBS/sample, max TLU input "
                  f"{report['max_tlu_input_bits']} bits, p_error {report['p_error']:.2e}")
        fc = cls(circuit, plan, module, batch_size, report, verbose)
        fc._recompile = dict(
            inputset_q=rows, p_error=p_error, global_p_error=report["global_p_error_requested"],
            security_level=security_level, range_mode=range_mode, range_margin=range_margin,
            on_overflow=on_overflow, batch_size=batch_size, compress=compress,
            insecure_key_cache=insecure_key_cache, concrete_options=concrete_options,
            parameter_strategy=strategy)
        return fc

    # -------------------------------------------------------------- keys, run
    @property
    def keys_generated(self) -> bool:
        keys = self.module.keys
        return keys is not None and keys.are_generated

    def keygen(self, force: bool = False, seed: int | None = None, warm: bool = True) -> float:
        """Generate the secret and evaluation keys; return the seconds it took.

        ``warm`` (default): then run the single-sample function once (see
        :meth:`warm_up`), so that the one-off work of the first run on new keys is paid
        here, not by the first prediction; its seconds are ``report["warmup_seconds"]``,
        not part of the returned keygen time.
        """
        with self._key_lock:
            if self.keys_generated and not force:
                return 0.0
            return self._keygen(force, seed, warm)

    def _keygen(self, force: bool, seed: int | None, warm: bool) -> float:
        t0 = time.perf_counter()
        if self.verbose:
            size = self.report.get("size_of_evaluation_keys", 0) / 2**20
            print(f"[latentopt] generating keys ({size:.0f} MiB of evaluation keys) ...",
                  flush=True)
        self.module.keygen(force=force, seed=seed)
        self.warm = False
        seconds = time.perf_counter() - t0
        self.report["keygen_seconds"] = seconds
        if self.verbose:
            print(f"[latentopt] keygen {seconds:.2f}s", flush=True)
        if warm:
            self.warm_up()
        return seconds

    def warm_up(self) -> float:
        """Run one encrypted sample (the lowest encryptable input) and discard it.

        The first run after key generation costs far more than the next ones: the server
        expands the seeded (compressed) evaluation keys and prepares them (measured 0.3-3.7
        s on 2 cores, against 0.1-0.5 s for a steady run; ``benchmarks/fhe_profile.py``).
        :meth:`keygen` calls this by default.  Returns the seconds it took (also
        ``report["warmup_seconds"]``).
        """
        t0 = time.perf_counter()
        fn = self._functions["single"]
        q = np.full((1, self.circuit.n_features), self.report["input_range"][0], np.int64)
        fn.run(fn.encrypt(q))
        self.warm = True
        seconds = time.perf_counter() - t0
        self.report["warmup_seconds"] = seconds
        return seconds

    def simulate(self, q: np.ndarray) -> np.ndarray:
        """Simulate the encrypted computation (TLU errors included) on quantized inputs.

        Returns the output integers of the circuit (what ``IntegerBackend.run_integers``
        returns), shape ``(n_samples, n_outputs)``.  Concrete's simulation does not model
        values overflowing their compiled bit-width (possible in ``"calibrated"`` mode for
        inputs unlike the calibration data): :meth:`overflows` finds those samples.
        """
        q = self.check_inputs(q)
        out = np.empty((q.shape[0], self.circuit.n_outputs), dtype=np.int64)
        calls = self.chunks(q.shape[0], pad_from=2)  # padding is cheap here
        bar = _progress(len(calls), bool(self.verbose) and len(calls) > 50, "FHE simulate")
        for start, stop, name in calls:
            y = self._functions[name].simulate(self._pad(q[start:stop], name))
            out[start:stop] = np.asarray(y, dtype=np.int64)[: stop - start]
            bar.update(1)
        bar.close()
        return out + self.plan.output_offset

    def execute(self, q: np.ndarray, n_jobs: int = 2) -> np.ndarray:
        """Encrypt, run under FHE and decrypt; keys are generated on first use.

        Samples run in batches of ``batch_size`` (the remainder as single samples or one
        padded batch).  Encryption and decryption happen in this thread while up to
        ``n_jobs`` encrypted calls run concurrently (concrete releases the GIL).
        """
        q = self.check_inputs(q)
        self.keygen()
        out = np.empty((q.shape[0], self.circuit.n_outputs), dtype=np.int64)
        calls = list(self.chunks(q.shape[0]))
        bar = _progress(len(calls), bool(self.verbose) and len(calls) > 1, "FHE execute")
        pending: deque[tuple[int, int, Any, Future[Any]]] = deque()

        def finish() -> None:
            start, stop, fn, future = pending.popleft()
            y = fn.decrypt(future.result())
            out[start:stop] = np.asarray(y, dtype=np.int64)[: stop - start]
            bar.update(1)

        with ThreadPoolExecutor(max_workers=max(1, int(n_jobs))) as pool:
            for start, stop, name in calls:
                fn = self._functions[name]
                encrypted = fn.encrypt(self._pad(q[start:stop], name))
                pending.append((start, stop, fn, pool.submit(fn.run, encrypted)))
                if len(pending) >= max(1, int(n_jobs)):
                    finish()
            while pending:
                finish()
        bar.close()
        self.warm = True
        return out + self.plan.output_offset

    def profile(self, q: np.ndarray, repeats: int = 5, cost_model: Any = None) -> Any:
        """Latency breakdown of one sample (the first row of ``q``): encryption, server
        run (split into bootstraps, key switches and linear work with ``cost_model``),
        decryption, and the floor; a :class:`~.fhe_profile.LatencyProfile`."""
        from .fhe_profile import profile_execution

        return profile_execution(self, q, repeats=repeats, cost_model=cost_model)

    def chunks(self, n: int, pad_from: float | None = None) -> list[tuple[int, int, str]]:
        """The calls covering ``n`` samples, see :func:`plan_calls`."""
        return plan_calls(n, self.batch_size, pad_from)

    def _pad(self, x: np.ndarray, name: str) -> np.ndarray:
        return pad_batch(x, name, self.batch_size)

    def overflows(self, q: np.ndarray) -> np.ndarray:
        """Which samples may overflow a compiled bit-width (wrong under real execution).

        Exact integer evaluation checked against the widths of the lowering; samples
        outside the encryptable ``report["input_range"]`` are flagged too.  ``q`` may be
        anything the input quantizer produces.  Always all ``False`` in ``"worst_case"``
        mode.
        """
        q = check_quantized(q, self.circuit.n_features, self.circuit.input_quantizer.qrange)
        lo, hi = self.report["input_range"]
        outside = ((q < lo) | (q > hi)).any(axis=1)
        widths = {name: (vp.offset, vp.bits) for name, vp in self.plan.values.items()
                  if name != self.plan.input_name}
        return outside | IntegerBackend(self.circuit).overflows(q, widths)

    def save_deployment(self, directory: str | Path, via_mlir: bool = False,
                        client_extra: dict[str, bytes] | None = None) -> dict[str, Path]:
        """Write the server and client artefacts, see :mod:`.fhe_deploy`."""
        return save_deployment(self, directory, via_mlir=via_mlir, client_extra=client_extra)

    def check_inputs(self, q: np.ndarray) -> np.ndarray:
        """Validate quantized inputs against what the compiled circuit can encrypt."""
        return check_quantized(
            q, self.circuit.n_features, self.report["input_range"],
            reason=f"the range this FHE circuit was compiled for, range_mode="
                   f"{self.report['range_mode']!r}; use range_mode='worst_case' or a "
                   f"calibration set covering the inputs")


def input_box(circuit: Circuit, inputset_q: np.ndarray, range_mode: str, range_margin: float,
              encryptable: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature bounds of the quantized inputs a compiled circuit is meant for.

    ``"worst_case"``: the quantizer's whole range (every input it can produce).
    ``"calibrated"``: the calibration data's per-feature bounds widened by ``range_margin``
    x their span on each side, within the quantizer's range and the encryptable range.
    """
    qlo, qhi = circuit.input_quantizer.qrange
    n = circuit.n_features
    if range_mode == "worst_case":
        return np.full(n, qlo, np.int64), np.full(n, qhi, np.int64)
    q = np.asarray(inputset_q, np.int64).reshape(-1, n)
    lo, hi = q.min(axis=0), q.max(axis=0)
    pad = np.ceil(range_margin * (hi - lo)).astype(np.int64)
    lo = np.maximum(lo - pad, max(qlo, encryptable[0]))
    hi = np.minimum(hi + pad, min(qhi, encryptable[1]))
    return lo, hi


def remove_library_dirs(module: Any) -> None:
    """Delete the temporary directories of a concrete module's compiled libraries."""
    for runtime in (module.execution_runtime, module.simulation_runtime):
        if runtime.initialized:
            with contextlib.suppress(AttributeError):
                shutil.rmtree(runtime.val.server._library.get_output_dir_path(),
                              ignore_errors=True)


def _progress(total: int, show: bool, desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="call", disable=not show)
