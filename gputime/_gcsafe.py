"""Whether the current thread is running the garbage collector, where nothing may block.

A generator or async generator abandoned inside a reference cycle is closed by
the cyclic collector. The collector runs at any allocation, on whatever thread
allocates, while that thread may hold any lock: gputime's own, an OpenTelemetry
SDK's, a logging handler's. A task end that runs there (the ``finally`` of a
decorated generator, ``__exit__`` of a ``with gpu_task`` inside one) must not
take a lock, must not set or reset a context variable (CPython 3.10 and 3.11
can corrupt the context and crash: cpython#148891), must not log, and must not
call into an SDK. :func:`in_collection` tells the task path when it is there,
so it records the end without locks and leaves the rest to an ordinary caller.

The collector calls :data:`gc.callbacks` on the collecting thread before and
after each collection, and runs every finaliser in between, so one callback
that notes the collecting thread is an exact test. It costs two Python calls
per collection, whichever thread collects.
"""

from __future__ import annotations

import gc
import threading

from gputime import _fork

_get_ident = threading.get_ident

#: The ident of the thread running a collection now, 0 while none does. Read
#: without a lock: a collection cannot nest, and only the collecting thread
#: compares it with its own ident.
collecting = 0


def _on_collection(phase: str, info: dict[str, int]) -> None:
    global collecting
    collecting = _get_ident() if phase == "start" else 0


def in_collection() -> bool:
    """Whether this thread is inside a garbage collection (running its finalisers)."""
    thread = collecting
    return thread != 0 and thread == _get_ident()


def _forget_in_child() -> None:
    # A fork taken while another thread was collecting: that collection does
    # not go on in the child.
    global collecting
    collecting = 0


if _on_collection not in gc.callbacks:  # pragma: no branch - once per process
    gc.callbacks.append(_on_collection)
_fork.in_child(_forget_in_child)
