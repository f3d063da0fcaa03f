"""What hybrid shows while it works: no silent wait over a couple of seconds (issue 18).

Work measured in slices or series gets a tqdm bar where it happens.  One-off work that
cannot count its steps (reading a series, loading the models, building the dictionary's
search graph, writing the output) runs inside :func:`working`: when it lasts longer than
``after`` seconds, a one-line notice on stderr says what is happening and counts the
seconds (redrawn in place on a terminal), and ends with the time it took; quick work
prints nothing.  Both go to stderr and both are off with ``progress=False``
(``--no-progress``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["working", "exit_now", "NOTICE_AFTER_S", "NOTICE_TICK_S"]

#: Work shorter than this prints no notice (the bar for a silent wait is 2 s).
NOTICE_AFTER_S = 1.0
#: How often a terminal notice redraws its seconds.
NOTICE_TICK_S = 0.5


@contextmanager
def working(what: str, *, enabled: bool = True, after: float = NOTICE_AFTER_S,
            stream=None) -> Iterator[None]:
    """Show ``"<what>... 12 s"`` while the block runs, then ``"<what>: done in 12.3 s"``,
    unless the block ends within ``after`` seconds (then nothing is shown).

    ``what`` names the work ("hybrid: loading the models").  ``after=0`` shows the
    notice at once: use it where the work silences stderr for a while (TensorFlow's
    import, :func:`hybrid._logs.silenced_stderr`).  On a terminal the seconds are redrawn
    in place; elsewhere (a log file, a pipe) the notice is one line when shown and one at
    the end.
    """
    if not enabled:
        yield
        return
    out = stream if stream is not None else sys.stderr
    live = bool(getattr(out, "isatty", lambda: False)())
    t0 = time.perf_counter()
    stop = threading.Event()
    shown = threading.Event()
    lock = threading.Lock()

    def write(text: str) -> None:
        try:
            out.write(text)
            out.flush()
        except (OSError, ValueError):  # the stream went away
            pass

    def show() -> None:
        with lock:
            if not stop.is_set() and not shown.is_set():
                write(f"{what}..." if live else f"{what}...\n")
                shown.set()

    def tick() -> None:
        if stop.wait(after):
            return
        show()
        while live and not stop.wait(NOTICE_TICK_S):
            with lock:
                if not stop.is_set():
                    write(f"\r{what}... {time.perf_counter() - t0:.0f} s")

    if after <= 0:
        show()
    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        with lock:
            stop.set()
        thread.join()
        if shown.is_set():
            write(f"{chr(13) if live else ''}{what}: done in {time.perf_counter() - t0:.1f} s\n")


def exit_now(code: int) -> None:  # pragma: no cover - ends the process; the scripts call it
    """End a command-line process at once, its outputs written and closed.

    What would follow is the interpreter tearing TensorFlow and FAISS down: about 2 s of
    silence after the last line on a 2-core machine.  So flush the streams, close the
    logs, and leave (``os._exit``).  Only for ``__main__`` entry points: never from code
    a library user or a test calls.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(int(code))
