"""Who is calling: the Caller of the call in progress, set by the call guard once the call is admitted.

Its own module so that anything below the server (the audit servicer, the services' servicers) can
read the caller without importing the server bootstrap.
"""

from __future__ import annotations

import contextvars

from service_runtime.api_keys import Caller

_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller")


def current_caller() -> Caller:
    """The admitted caller of the call in progress (LookupError outside a call)."""
    return _caller.get()


def enter_call(caller: Caller) -> None:
    _caller.set(caller)
