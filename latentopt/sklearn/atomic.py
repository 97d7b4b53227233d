"""A ``fit`` that fails leaves the estimator as it was.

A fit sets its fitted attributes step by step (``classes_``, ``n_features_in_``,
``y_ndim_``, ...) before the steps that can still fail (a teacher of the wrong length, a
module with the wrong number of outputs, an interrupted training).  Left half-updated,
the estimator paired the new labels or target shape with the old circuit and answered
wrong without an error.  :func:`atomic_fit` restores the attributes it had before.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["atomic_fit"]

F = TypeVar("F", bound=Callable[..., Any])


def atomic_fit(fit: F) -> F:
    """Wrap ``fit(self, ...)``: on any exception, ``self``'s attributes are restored.

    Fits replace their fitted attributes rather than mutate them in place, so a shallow
    copy of the instance dictionary is the state to restore.
    """

    @functools.wraps(fit)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        before = dict(self.__dict__)
        try:
            return fit(self, *args, **kwargs)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(before)
            raise

    return wrapper  # type: ignore[return-value]
