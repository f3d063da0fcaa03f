"""Silent waits of a command, as a newcomer sees them (issue 18; a measurement, not a test).

Runs COMMAND with stdout and stderr joined, unbuffered, and stamps every line and every
progress-bar redraw (``\\r``) with the time it arrived.  Reports each wait of more than
``--limit`` seconds (2) between two outputs, and whether something was on screen telling
what was happening: a progress bar (the last output was a tqdm line) or a notice (a line
ending in "...", in effect until its ": done" line).  A wait with neither is silent.

    python experiments/first_run.py --out experiments/results/first_run.json -- make demo
    HYBRID_CACHE_DIR=$(mktemp -d) python experiments/first_run.py -- make demo   # cold

Writes the timeline (seconds, text) and the waits to ``--out`` (JSON) and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

_BAR = re.compile(r"\d+%\|")  # a tqdm bar: "... 50%|█████     | 4/8 ..."
#: Lines that announce work about to happen (hybrid's notices end with an ellipsis).
_NOTICE = re.compile(r"(\.\.\.|\u2026)\s*$")


def timeline(argv: list[str], env: dict[str, str]) -> tuple[list[tuple[float, str]], int]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    events: list[tuple[float, str]] = []
    assert proc.stdout is not None
    while True:
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        now = time.perf_counter() - t0
        # every piece counts as shown when it arrives, also one not yet ended by \r or \n
        # (a bar's first draw); a line split across two reads becomes two events
        events.extend((now, p.decode(errors="replace")) for p in re.split(rb"[\r\n]", chunk)
                      if p.strip())
    rc = proc.wait()
    events.append((time.perf_counter() - t0, "<exit>"))
    return events, rc


def waits(events: list[tuple[float, str]], limit: float) -> list[dict]:
    """Each wait over ``limit`` and what was on screen: the last output if it was a bar,
    else the notice in effect (a line ending in "..." stays on screen, and in effect,
    until its ": done" line or the next notice: other lines printed below it, a warning
    of pip's say, do not take it back), else nothing ("silent")."""
    out = []
    last_t, last_text, notice = 0.0, "<start>", None
    for t, text in events:
        gap = t - last_t
        if gap > limit:
            shown = ("bar" if _BAR.search(last_text) else "notice" if notice else "silent")
            out.append({"after_s": round(last_t, 2), "wait_s": round(gap, 2), "shown": shown,
                        "last_output": last_text[-160:], "notice": notice and notice[-160:],
                        "next_output": text[-160:]})
        if _NOTICE.search(text):
            notice = text
        elif notice and text.startswith(notice.rstrip(".\u2026 ") + ": done"):
            notice = None
        last_t, last_text = t, text
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=float, default=2.0, help="longest acceptable silent wait, s")
    p.add_argument("--out", type=Path, help="JSON file for the timeline and the waits")
    p.add_argument("--reanalyse", type=Path, metavar="JSON",
                   help="classify the waits of a timeline written before (--out) again")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = p.parse_args()
    argv = [a for a in args.command if a != "--"] or ["make", "demo"]
    if args.reanalyse:
        old = json.loads(args.reanalyse.read_text())
        argv, rc = old["command"], old["exit"]
        events = [(float(t), str(s)) for t, s in old["timeline"]]
    else:
        events, rc = timeline(argv, {**os.environ, "PYTHONUNBUFFERED": "1"})
    found = waits(events, args.limit)
    silent = [w for w in found if w["shown"] == "silent"]
    for w in found:
        print(f"{w['after_s']:7.1f} s  waited {w['wait_s']:5.1f} s  [{w['shown']}]  "
              f"after: {w['last_output'][:90]!r}")
    print(f"{argv}: exit {rc}, {events[-1][0]:.1f} s, {len(found)} wait(s) over {args.limit} s, "
          f"{len(silent)} silent")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": argv, "exit": rc, "seconds": round(events[-1][0], 2),
            "cache_dir": os.environ.get("HYBRID_CACHE_DIR"), "limit_s": args.limit,
            "waits": found, "timeline": [(round(t, 3), s[-200:]) for t, s in events],
        }, indent=1) + "\n")
    return 0 if rc == 0 else rc


if __name__ == "__main__":
    sys.exit(main())
