"""Run test functions in spawned child processes and collect their results."""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

SPAWN = multiprocessing.get_context("spawn")


def _reply(pipe: Connection, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        result = ("ok", target(*args))
    except BaseException as exc:  # the parent asserts on it
        result = ("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    pipe.send(result)
    pipe.close()


def run_children(
    calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]], timeout: float
) -> list[tuple[str, Any]]:
    """Start one process per call at once; return ("ok", result) or ("error", text) for each.

    Arguments may include spawn-context synchronization objects (a Barrier,
    an Event), which a Pool cannot pass. A child still running after
    ``timeout`` seconds is killed and reported as an error.
    """
    started = []
    for target, args in calls:
        parent_end, child_end = SPAWN.Pipe(duplex=False)
        process = SPAWN.Process(target=_reply, args=(child_end, target, args))
        process.start()
        child_end.close()
        started.append((process, parent_end))

    results: list[tuple[str, Any]] = []
    for process, pipe in started:
        if pipe.poll(timeout):
            results.append(pipe.recv())
        else:
            results.append(("error", f"no result within {timeout} s"))
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join(timeout=10)
        pipe.close()
    return results
