"""Threads for independent per-slice work (numpy and scipy.ndimage release the GIL)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def available_cores() -> int:
    """Cores this process may use (CPU affinity), capped by ``OMP_NUM_THREADS`` if set."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        n = min(n, int(env))
    return max(1, n)


def thread_map(fn: Callable[[T], Any], items: Iterable[T], *, max_threads: int = 8) -> list:
    """``[fn(x) for x in items]`` on up to ``available_cores()`` threads, in order.

    Only for work whose items are independent (each writes its own output);
    the results are then the same as the serial loop's.
    """
    items = list(items)
    n = min(available_cores(), max_threads, len(items))
    if n <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(fn, items))
