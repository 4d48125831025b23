"""A worker pool: one function called on each task, in this process or in worker processes.
Whatever a task's failure (any exception, one that cannot be pickled or unpickled, a worker
process killed) it comes back to the caller as that task's error with the worker's message,
never as a wait that does not end. Standard library only: a worker imports nothing else to
start."""

from __future__ import annotations

import functools
import multiprocessing as mp
import traceback
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterator, Sequence, Tuple


class TaskFailed(RuntimeError):
    """A task's exception in a worker, as text (``Type: message`` and the worker's traceback):
    it pickles whatever the exception was."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __reduce__(self):
        return (type(self), (self.message, self.details))


def describe(error: BaseException) -> str:
    """``Type: message`` of an exception (``Type`` alone when it has no message or no printable one)."""
    try:
        text = str(error)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the failure
        text = ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def failure_message(error: BaseException) -> str:
    """What a failed task reports: a worker's ``TaskFailed`` its own text, anything else described."""
    return error.message if isinstance(error, TaskFailed) else describe(error)


def guarded(function: Callable[[Any], Any], task: Any) -> Any:
    """``function(task)`` in a worker; its exception comes back as a ``TaskFailed``."""
    try:
        return function(task)
    except BaseException as error:  # noqa: BLE001 - every failure goes back to the caller as text
        raise TaskFailed(describe(error), traceback.format_exc()) from None


def outcomes(function: Callable[[Any], Any], tasks: Sequence[Any], jobs: int) -> Iterator[Tuple[Any, Callable[[], Any]]]:
    """(task, call giving ``function(task)`` or raising its failure) for each task, in order: in
    this process (``jobs`` <= 1) or from ``jobs`` spawned worker processes. A worker killed ends
    the pool: its task and those not finished raise ``BrokenProcessPool``. Tasks not started are
    cancelled when the caller stops early."""
    if jobs <= 1:
        for task in tasks:
            yield task, functools.partial(function, task)
        return
    pool = ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"))
    try:
        pending = [(task, pool.submit(guarded, function, task)) for task in tasks]
        for task, future in pending:
            yield task, future.result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
