"""hybrid._progress.working: a notice for long one-off work, nothing for short work."""

from __future__ import annotations

import io
import time

from hybrid._progress import working


def test_short_work_prints_nothing():
    out = io.StringIO()
    with working("hybrid: something quick", stream=out, after=5.0):
        pass
    assert out.getvalue() == ""


def test_long_work_prints_a_notice_and_its_time():
    """after=0.05 s against 0.3 s of work: a margin of six times for a loaded machine."""
    out = io.StringIO()  # not a terminal: one line at the start, one at the end
    with working("hybrid: reading the series", stream=out, after=0.05):
        time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert lines[0] == "hybrid: reading the series..."
    assert lines[1].startswith("hybrid: reading the series: done in ")
    assert float(lines[1].split("done in ")[1].split()[0]) >= 0.3 - 0.05


def test_after_zero_announces_at_once_and_disabled_is_silent():
    out = io.StringIO()
    with working("hybrid: loading the models", stream=out, after=0):
        assert out.getvalue() == "hybrid: loading the models...\n"
    assert "done in" in out.getvalue()
    quiet = io.StringIO()
    with working("hybrid: loading the models", stream=quiet, after=0, enabled=False):
        pass
    assert quiet.getvalue() == ""


def test_importing_hybrid_changes_no_environment_variable():
    """Only loading TensorFlow (hybrid/cnn/_tf.py) sets TF_CPP_MIN_LOG_LEVEL; importing the
    package, its CNN configuration or the CLI module does not touch os.environ."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",
                                                             "HYBRID_VERBOSE")}
    code = ("import os; before = dict(os.environ); import hybrid, hybrid.cnn, hybrid.cli; "
            "assert dict(os.environ) == before, set(os.environ) ^ set(before); "
            "from hybrid.cnn import _tf; assert os.environ['TF_CPP_MIN_LOG_LEVEL'] == '3'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
