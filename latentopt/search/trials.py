"""Running trials reliably: study identity, model cache, deduplication, exact counts.

* **Identity.**  A study records what it searches (the template's parameters, the
  space, a hash of the data and its split, the budget); resuming it with anything else
  is a :class:`StudyMismatchError`, never a silent resume of another search.
* **Model cache.**  Trained models are cached on disk under a key of *every* effective
  estimator parameter (fixed template parameters included), the data and the teacher.
* **No repeats.**  A trial whose parameters equal those of a trial already evaluated
  (complete, failed with a recorded error, or pruned by the objective) or being
  evaluated (running or queued) elsewhere is skipped before training (state ``PRUNED``,
  user attribute ``skipped``), in this process, in worker processes and across resumes.
  The parameters compared are those the objective's ``sample(trial)`` suggests (default:
  :func:`~latentopt.search.space.sample_params` of the search's space).
* **Exact counts.**  ``n_trials`` counts evaluated trials (complete, or failed with a
  recorded error) across all workers: a trial started when enough trials are already
  evaluated or running is skipped before any work.
* **Failures are results.**  A trial that raises is recorded as ``FAIL`` with its
  reason in the user attribute ``error`` and the search goes on.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from .scoring import scoring_name
from .space import sample_params, search_space
from .storage import recover_stale_trials

__all__ = ["ModelCache", "StudyMismatchError", "bind_identity", "canonical", "check_main_guard",
           "make_sampler", "model_key", "n_evaluated", "optimize", "run_trials",
           "space_identity", "study_identity"]

ERROR_ATTR = "error"
SKIPPED_ATTR = "skipped"
IDENTITY_ATTR = "latentopt_identity"
#: Consecutive duplicate samples after which a worker considers the space exhausted.
MAX_DUPLICATES = 30


class StudyMismatchError(ValueError):
    """An existing study was created for another search (template, space, data, budget)."""


# ----------------------------------------------------------------------------- identity
def canonical(value: Any) -> Any:
    """A JSON-able, deterministic description of a parameter value.

    Estimators become their class and parameters, arrays a hash of their bytes, other
    objects their type (never an address that changes between runs).

    >>> canonical({"a": (1, 2.0), "b": None})
    {'a': [1, 2.0], 'b': None}
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, np.generic):
        return canonical(value.item())
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        return {"array": hashlib.sha256(a.tobytes()).hexdigest()[:16], "shape": list(a.shape),
                "dtype": str(a.dtype)}
    if hasattr(value, "state_dict") and hasattr(value, "named_parameters"):  # torch module
        h = hashlib.sha256(repr(value).encode())
        for k, t in value.state_dict().items():
            h.update(k.encode())
            h.update(np.ascontiguousarray(t.detach().cpu().float().numpy()).tobytes())
        return {"module": f"{type(value).__module__}.{type(value).__qualname__}",
                "weights": h.hexdigest()[:16]}
    if hasattr(value, "get_params"):
        return {"class": f"{type(value).__module__}.{type(value).__qualname__}",
                "params": canonical(value.get_params(deep=False))}
    if callable(value) and hasattr(value, "__qualname__"):  # a function or class
        return {"callable": f"{getattr(value, '__module__', '')}.{value.__qualname__}"}
    return {"type": f"{type(value).__module__}.{type(value).__qualname__}"}


def fingerprint(obj: Any) -> str:
    """Short SHA-256 of the canonical JSON of ``obj``."""
    text = json.dumps(canonical(obj), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _template_params(estimator: Any) -> dict[str, Any]:
    # verbosity changes no result; the teacher is keyed by its outputs (teacher_key)
    return {k: v for k, v in estimator.get_params(deep=False).items()
            if k not in ("verbose", "teacher")}


def space_identity(space: Mapping[str, Any]) -> dict[str, Any]:
    """A space as JSON, ranges (tuples) told apart from choices (lists): ``[4, 8]`` and
    ``(4, 8)`` shared one study, whose trials then failed to resume forever.

    >>> space_identity({"n_a_bits": [4, 8], "n_w_bits": (4, 8)})
    {'n_a_bits': [4, 8], 'n_w_bits': {'range': [4, 8]}}
    """
    return {str(k): {"range": canonical(v)} if isinstance(v, tuple) else canonical(v)
            for k, v in sorted(space.items(), key=lambda kv: str(kv[0]))}


def study_identity(search: Any, data_key: str, teacher_key: str) -> dict[str, Any]:
    """What a :class:`~latentopt.search.LatencySearch` study searches (``fit`` state)."""
    cm = search.cost_model_
    scoring = scoring_name(getattr(search, "scoring", None))
    identity: dict[str, Any] = {
        "estimator": {"class": type(search.estimator).__qualname__,
                      "params": canonical(_template_params(search.estimator))},
        "space": space_identity(search_space(search.param_space, search.estimator)),
        "data": {"hash": data_key, "validation_fraction": search.validation_fraction,
                 "holdout_fraction": search.holdout_fraction,
                 "random_state": search.random_state},
        "budget": {"max_accuracy_drop": search.max_accuracy_drop,
                   "reference_score": search.reference_score},
        "teacher": teacher_key,
        "evaluation": {"n_repeats": search.n_repeats,
                       "multi_fidelity": search.multi_fidelity,
                       # the check's verdicts are stored in the trials and reused
                       "check_folds": search.check_folds,
                       "cost_model": None if cm is None else type(cm).__qualname__},
    }
    if scoring is not None:  # (studies of the estimators' own score keep their identity)
        identity["budget"]["scoring"] = scoring
    return identity


def bind_identity(study: Any, identity: Mapping[str, Any]) -> None:
    """Record ``identity`` on a new study, or check it against the stored one.

    Raises
    ------
    StudyMismatchError
        The study holds another search's identity, or trials without any identity.
    """
    ident = canonical(identity)
    stored = study.user_attrs.get(IDENTITY_ATTR)
    name = study.study_name
    if stored is None:
        if study.get_trials(deepcopy=False):
            raise StudyMismatchError(
                f"study {name!r} already holds trials that LatencySearch did not record "
                "(no identity): choose another study_name or storage")
        study.set_user_attr(IDENTITY_ATTR, ident)
        return
    if fingerprint(stored) == fingerprint(ident):
        return
    def differ(a: Any, b: Any) -> bool:
        return json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True)

    diff = []  # named down to the setting where a part is a dict ("budget (scoring)")
    for k in sorted(set(ident) | set(stored)):
        a, b = stored.get(k), ident.get(k)
        if not differ(a, b):
            continue
        subs = (sorted(s for s in set(a) | set(b) if differ(a.get(s), b.get(s)))
                if isinstance(a, dict) and isinstance(b, dict) else [])
        diff.append(f"{k} ({', '.join(subs)})" if subs else k)
    raise StudyMismatchError(
        f"study {name!r} in this storage was created for another search: its "
        f"{', '.join(diff)} differ(s) from this one's. Resuming would mix trials of "
        "different searches; use another study_name (or storage), or the original settings")


# -------------------------------------------------------------------------- model cache
def model_key(estimator: Any, data_key: str, teacher_key: str = "") -> str:
    """Cache key of a model: every effective parameter, the training data, the teacher."""
    return fingerprint({"class": f"{type(estimator).__module__}.{type(estimator).__qualname__}",
                        "params": _template_params(estimator), "data": data_key,
                        "teacher": teacher_key})


class ModelCache:
    """Trained models pickled in a directory, written atomically (safe across processes)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"model-{key}.pkl"

    def load(self, key: str) -> Any | None:
        """The cached model, or None (a corrupt entry is removed)."""
        path = self.path(key)
        if not path.exists():
            return None
        try:
            with open(path, "rb") as fh:
                return pickle.load(fh)
        except Exception:
            path.unlink(missing_ok=True)
            return None

    def store(self, key: str, model: Any) -> None:
        path = self.path(key)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            pickle.dump(model, fh)
        os.replace(tmp, path)


# ------------------------------------------------------------------------------ running
def make_sampler(seed: int | None, worker: int = 0, n_existing: int = 0) -> Any:
    """The sampler of one worker: seeded per worker and per resume (no replayed streams)."""
    if seed is not None and (worker or n_existing):
        seed = int(np.random.SeedSequence([seed, worker, n_existing]).generate_state(1)[0])
    return optuna.samplers.NSGAIISampler(seed=seed)


def _evaluated(t: Any) -> bool:
    return bool(t.state == TrialState.COMPLETE
                or (t.state == TrialState.FAIL and ERROR_ATTR in t.user_attrs))


def n_evaluated(study: Any) -> int:
    """Trials that count towards ``n_trials``: complete, or failed with a reason."""
    return sum(_evaluated(t) for t in study.get_trials(deepcopy=False))


def _claimed_before(study: Any, number: int) -> int:
    return sum(_evaluated(t) or (t.state == TrialState.RUNNING and t.number < number)
               for t in study.get_trials(deepcopy=False))


#: Seconds between looks at a study whose remaining trials are under way elsewhere.
POLL_SECONDS = 2.0


def _wait_for_running(study: Any, deadline: float | None,
                      check: Callable[[], None] | None) -> bool:
    """Wait while the study has running trials (failing stale ones, see
    :func:`~latentopt.search.storage.recover_stale_trials`); False if there were none
    or the deadline passed first."""
    waited = announced = False
    start = time.monotonic()
    while any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        if check is not None:
            check()
        time.sleep(POLL_SECONDS)
        recover_stale_trials(study)
        waited = True
        if not announced and time.monotonic() - start > 10:
            warnings.warn("the study's last trials are under way in another process, or "
                          "were left by a killed run (failed as stale and retried once "
                          "the storage's grace period has passed): waiting for them",
                          stacklevel=3)
            announced = True
    return waited


def find_duplicate(study: Any, trial: Any) -> int | None:
    """Number of another trial with the same parameters, evaluated or under way."""
    mine = trial.params
    for t in study.get_trials(deepcopy=False):
        pruned = t.state == TrialState.PRUNED and SKIPPED_ATTR not in t.user_attrs
        if t.number == trial.number or not (
                _evaluated(t) or pruned or t.state in (TrialState.RUNNING, TrialState.WAITING)):
            continue
        if all(k in t.params and t.params[k] == v for k, v in mine.items()):
            return int(t.number)
    return None


def _presample(objective: Any, trial: Any) -> None:
    """Suggest the trial's parameters now (the objective gets the same values again)."""
    sample = getattr(objective, "sample", None)
    if callable(sample):
        sample(trial)
    else:
        search = objective.search
        sample_params(trial, search_space(search.param_space, search.estimator),
                      search.estimator)


class _Guarded:
    """Wraps the objective: skips surplus and duplicate trials, records failures."""

    def __init__(self, objective: Any, n_trials: int) -> None:
        self.objective = objective
        self.n_trials = n_trials
        self.skipped: str | None = None

    def __call__(self, trial: Any) -> Any:
        study = trial.study
        self.skipped = None
        if _claimed_before(study, trial.number) >= self.n_trials:
            self._skip(trial, "surplus")
        try:  # a failure while sampling is a failed trial too (uncounted, it looped)
            _presample(self.objective, trial)
        except Exception as exc:
            trial.set_user_attr(ERROR_ATTR, f"{type(exc).__name__}: {exc}"[:2000])
            raise
        dup = find_duplicate(study, trial)
        if dup is not None:
            self._skip(trial, f"duplicate of trial {dup}")
        try:
            values = self.objective(trial)
            if any(not math.isfinite(float(v)) for v in values):
                raise FloatingPointError(f"objective values {values} are not finite")
            return values
        except Exception as exc:
            trial.set_user_attr(ERROR_ATTR, f"{type(exc).__name__}: {exc}"[:2000])
            raise

    def _skip(self, trial: Any, why: str) -> None:
        self.skipped = why
        trial.set_user_attr(SKIPPED_ATTR, why)
        raise optuna.TrialPruned(why)


def run_trials(study: Any, objective: Any, n_trials: int, *, timeout: float | None = None,
               callbacks: list[Callable[..., None]] | None = None,
               check: Callable[[], None] | None = None) -> None:
    """Evaluate trials until the study holds ``n_trials`` evaluated ones (all workers).

    Optuna's loop runs each trial (heartbeat, stale-trial recovery, failure records);
    ``check`` is called before each trial (e.g. worker health), ``timeout`` stops
    starting new trials.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    guarded = _Guarded(objective, n_trials)
    in_a_row = 0
    while deadline is None or time.monotonic() < deadline:
        if check is not None:
            check()
        recover_stale_trials(study)
        if n_evaluated(study) >= n_trials:
            return
        study.optimize(guarded, n_trials=1, catch=(Exception,), callbacks=callbacks,
                       gc_after_trial=False)
        if guarded.skipped == "surplus":
            # the rest is claimed by trials under way (another worker's, or a killed
            # run's): wait until they finish or are failed as stale, then go on if the
            # study still lacks evaluated trials (returning at once left a resume right
            # after a kill, or the first of two processes, with 4 of 6 trials)
            if not _wait_for_running(study, deadline, check):
                return
            continue
        in_a_row = in_a_row + 1 if guarded.skipped else 0
        if in_a_row >= MAX_DUPLICATES:
            warnings.warn(f"the search space looks exhausted: {MAX_DUPLICATES} samples in a "
                          f"row repeated configurations already evaluated or already "
                          f"rejected before training (e.g. proved slower than the fastest "
                          f"feasible point by the cost model); stopping with "
                          f"{n_evaluated(study)} evaluated trials", stacklevel=2)
            return


def worker(study_name: str, storage: Any, objective: Any, n_trials: int,
           timeout: float | None, seed: int | None, index: int) -> None:  # pragma: no cover
    """Entry point of a worker process (run in a spawned interpreter)."""
    from .storage import make_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(storage)
    study = optuna.load_study(study_name=study_name, storage=storage)
    study.sampler = make_sampler(seed, index, len(study.get_trials(deepcopy=False)))
    run_trials(study, objective, n_trials, timeout=timeout)


def optimize(study: Any, objective: Any, n_trials: int, *, n_jobs: int = 1,
             storage: Any = None, timeout: float | None = None, seed: int | None = None,
             callbacks: list[Callable[..., None]] | None = None) -> None:
    """Run the study to ``n_trials`` evaluated trials here and in ``n_jobs - 1`` workers.

    Workers are spawned processes that open ``storage`` (a URL, path or picklable
    storage shared with ``study``) themselves.  A worker that fails (e.g. a script
    without a ``__main__`` guard) stops the search with a ``RuntimeError``; on any
    error the other workers are terminated.
    """
    remaining = n_trials - n_evaluated(study)
    procs: list[Any] = []

    def check_workers() -> None:
        for p in [p for p in procs if p.exitcode is not None and p.exitcode < 0]:
            # killed by a signal (out of memory, kill -9): its trial is recovered as stale
            # and retried; the other workers go on (this aborted the whole search, naming
            # a missing __main__ guard)
            procs.remove(p)
            warnings.warn(f"a search worker process was killed by signal {-p.exitcode} "
                          f"(out of memory?); its trial is failed as stale and retried, "
                          f"the other workers go on", stacklevel=2)
        dead = [p for p in procs if p.exitcode not in (None, 0)]
        if dead:
            raise RuntimeError(
                f"{len(dead)} of {len(procs)} search worker process(es) failed (exit code "
                f"{dead[0].exitcode}); see their error output above. A script started "
                "without an 'if __name__ == \"__main__\":' guard is the usual cause.")

    if n_jobs > 1 and remaining > 1:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        for i in range(min(n_jobs, remaining) - 1):
            p = ctx.Process(target=worker, args=(study.study_name, storage, objective,
                                                 n_trials, timeout, seed, i + 1))
            p.start()
            procs.append(p)
    ok = False
    try:
        run_trials(study, objective, n_trials, timeout=timeout, callbacks=callbacks,
                   check=check_workers)
        ok = True
    finally:
        for p in procs:
            if not ok and p.is_alive():
                p.terminate()  # our own worker process, by its handle
            p.join()
    check_workers()


# ---------------------------------------------------------------------- main-module guard
_GUARD_HELP = (
    "LatencySearch(n_jobs>1) starts worker processes with the 'spawn' method, which "
    "re-imports the main script in each worker; a script must therefore start the search "
    "under\n\n    if __name__ == \"__main__\":\n        search.fit(X, y)\n\n"
    "(otherwise every worker would start the search again). Add the guard, or use n_jobs=1.")


def _has_main_guard(source: str) -> bool:
    import ast

    for node in ast.parse(source).body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [node.test.left, *node.test.comparators]
            if (any(isinstance(n, ast.Name) and n.id == "__name__" for n in names)
                    and any(isinstance(n, ast.Constant) and n.value == "__main__"
                            for n in names)):
                return True
    return False


def check_main_guard() -> None:
    """Raise ``RuntimeError`` where spawned workers would re-run the search.

    Two cases: this code runs while a spawned worker imports the main module (the
    script started the search at import time), or the main script has no
    ``if __name__ == "__main__":`` block at all.  Interactive sessions, notebooks and
    ``python -c`` have no main file to re-import and pass.
    """
    import multiprocessing as mp

    if getattr(mp.current_process(), "_inheriting", False):
        raise RuntimeError("the search was started while a worker process imported the main "
                           "module. " + _GUARD_HELP)
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path or not str(path).endswith(".py") or not os.path.isfile(path):
        return
    try:
        source = Path(path).read_text(encoding="utf-8")
        guarded = _has_main_guard(source)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return
    if not guarded:
        raise RuntimeError(f"the main script {path} has no 'if __name__ == \"__main__\":' "
                           "block. " + _GUARD_HELP)
