"""Where a study lives: Optuna storages from URLs and paths, with stale-trial recovery.

:func:`make_storage` accepts

* ``None``: an in-memory study (one process);
* ``"sqlite:///search.db"`` or any SQLAlchemy URL: an :class:`optuna.storages.RDBStorage`;
  ``postgresql://user:password@host/db`` works with the ``search-postgres`` extra
  (``pip install latentopt[search-postgres]``, psycopg 3): the URL is rewritten to
  ``postgresql+psycopg://`` when psycopg 3 is the installed driver;
* a path ending in ``.journal`` (or a ``journal:///path`` URL): a file journal that
  several local processes share safely;
* an Optuna storage object, returned as is.

Every storage this module builds keeps a *heartbeat* per running trial: a trial whose
process died (killed, out of memory, machine lost) stops beating and, once its grace
period has passed, the next trial to start marks it failed and queues its parameters
again (:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`), so nothing stays
``RUNNING`` forever.  RDB storages use Optuna's own heartbeat; journals use
:class:`HeartbeatJournalStorage`, the same protocol written into the journal.

Importing this module imports Optuna: it is loaded by the search only.
"""

from __future__ import annotations

import importlib.util
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState

__all__ = ["HeartbeatJournalStorage", "make_storage", "normalize_url", "recover_stale_trials"]

#: Seconds between two heartbeats of a running trial.
HEARTBEAT_INTERVAL = 30
#: Seconds without a heartbeat after which a running trial is declared dead.
GRACE_PERIOD = 120
#: How many times the parameters of a trial whose process died are tried again.
MAX_RETRY = 2

_HEARTBEAT_ATTR = "latentopt:heartbeat"


def normalize_url(url: str) -> str:
    """A SQLAlchemy URL the installed drivers can open.

    ``postgresql://`` (and Heroku-style ``postgres://``) means psycopg2 to SQLAlchemy;
    when psycopg2 is absent and psycopg 3 is installed, the URL names psycopg 3.

    >>> normalize_url("sqlite:///study.db")
    'sqlite:///study.db'
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg"):
        return f"postgresql+psycopg://{rest}"
    return f"postgresql://{rest}"


class HeartbeatJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
    """A :class:`optuna.storages.JournalStorage` with Optuna's heartbeat protocol.

    Optuna implements heartbeats for RDB storages only.  Here a running trial's
    heartbeat is a timestamp in its system attributes, rewritten every
    ``heartbeat_interval`` seconds by the optimising process; a ``RUNNING`` trial whose
    last beat is older than ``grace_period`` seconds is stale, and
    :func:`optuna.storages.fail_stale_trials` (run by Optuna before each trial) fails it
    and calls ``stale_trial_callback``.  Timestamps are wall-clock seconds of the
    writing machine: processes sharing a journal must share a clock (a journal is a
    local file; use an RDB storage across machines).
    """

    def __init__(self, backend: Any, heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 grace_period: int | None = GRACE_PERIOD,
                 stale_trial_callback: Callable[..., None] | None = None) -> None:
        super().__init__(backend)
        if int(heartbeat_interval) < 1:
            raise ValueError(f"heartbeat_interval must be >= 1, got {heartbeat_interval!r}")
        self.heartbeat_interval = int(heartbeat_interval)
        self.grace_period = grace_period
        self.stale_trial_callback = stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, _HEARTBEAT_ATTR, time.time())
        except Exception:  # finished meanwhile (e.g. failed as stale by another worker)
            pass

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        grace = self.grace_period or 2 * self.heartbeat_interval
        now = time.time()
        return [t._trial_id for t in self.get_all_trials(
            study_id, deepcopy=False, states=(TrialState.RUNNING,))
            if now - float(t.system_attrs.get(_HEARTBEAT_ATTR, now)) > grace]

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[..., None] | None:
        return self.stale_trial_callback


def make_storage(storage: Any, *, heartbeat_interval: int = HEARTBEAT_INTERVAL,
                 grace_period: int | None = GRACE_PERIOD,
                 max_retry: int | None = MAX_RETRY) -> Any:
    """An Optuna storage from a URL, a ``.journal`` path, a storage object or None.

    Parameters
    ----------
    storage : str, path, optuna storage or None
        See the module docstring.
    heartbeat_interval, grace_period : int
        Seconds between heartbeats, and without one before a running trial is failed.
    max_retry : int or None
        How often a dead trial's parameters are queued again (None: always).

    Examples
    --------
    >>> make_storage(None) is None
    True
    """
    if storage is None or not isinstance(storage, (str, os.PathLike)):
        return storage
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _make(os.fspath(storage), heartbeat_interval, grace_period, max_retry)


def _make(s: str, heartbeat_interval: int, grace_period: int | None,
          max_retry: int | None) -> Any:
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    if s.endswith(".journal") or s.startswith("journal:///"):
        from optuna.storages.journal import JournalFileBackend

        path = s[len("journal:///"):] if s.startswith("journal:///") else s
        return HeartbeatJournalStorage(JournalFileBackend(path), heartbeat_interval,
                                       grace_period, retry)
    if "://" not in s:
        raise ValueError(f"storage {s!r} is neither a database URL (sqlite:///..., "
                         "postgresql://...) nor a path ending in '.journal'")
    return _rdb_storage(normalize_url(s), heartbeat_interval, grace_period, retry)


def _rdb_storage(url: str, heartbeat_interval: int, grace_period: int | None, retry: Any,
                 attempts: int = 5) -> Any:
    """An ``RDBStorage``, retried when another process creates the same fresh database's
    schema at the same moment (Optuna's set-up race: two processes starting one search
    on a new sqlite file crashed one with "UNIQUE constraint failed:
    alembic_version.version_num" in 3 of 4 runs)."""
    import random
    import time

    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                heartbeat_stale_trial_callback=retry)
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 + random.random() * 0.5)
    raise AssertionError("unreachable")  # pragma: no cover


def recover_stale_trials(study: Any) -> None:
    """Fail the study's stale running trials now (and queue their retries)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def local_storage_dir(storage: Any) -> Path | None:
    """Directory of a file-backed storage (sqlite URL, journal path or object), else None."""
    if not isinstance(storage, (str, os.PathLike)):
        path = getattr(getattr(storage, "_backend", None), "_file_path", None)
        url = getattr(storage, "url", None)
        if path is not None:
            return Path(path).parent
        return local_storage_dir(url) if isinstance(url, str) else None
    s = os.fspath(storage)
    for prefix in ("sqlite:///", "journal:///"):
        if s.startswith(prefix):
            return Path(s[len(prefix):]).parent
    return None if "://" in s else Path(s).parent  # a server URL has no local directory
