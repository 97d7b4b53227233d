"""A ``fit`` that fails leaves the estimator as it was.

A fit sets its fitted attributes step by step (``classes_``, ``n_features_in_``,
``y_ndim_``, ...) before the steps that can still fail (a teacher of the wrong length, a
module with the wrong number of outputs, an interrupted training).  Left half-updated,
the estimator paired the new labels or target shape with the old circuit and answered
wrong without an error.  Fits run inside :func:`restored_on_error`, which puts back the
attributes the estimator had before.  (A context manager, not a decorator: a wrapper
frame would move the ``stacklevel`` of every warning a fit gives off the user's line.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["restored_on_error"]


@contextlib.contextmanager
def restored_on_error(estimator: Any) -> Iterator[None]:
    """On any exception inside the block, restore ``estimator``'s attributes.

    Fits replace their fitted attributes rather than mutate them in place, so a shallow
    copy of the instance dictionary is the state to restore.
    """
    before = dict(estimator.__dict__)
    try:
        yield
    except BaseException:
        estimator.__dict__.clear()
        estimator.__dict__.update(before)
        raise
