"""``hybrid batch``: the subcommand's options and what it runs (:func:`hybrid.batch.run_batch`).

Registered by :mod:`hybrid.cli` through :func:`add_cli`; never imports it back.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hybrid.batch.plan import OUTPUT_FORMATS
from hybrid.io.transfer import TRANSFER_CHOICES

__all__ = ["add_cli"]

def _cmd_batch(args: argparse.Namespace) -> int:
    from hybrid.batch.run import run_batch

    summary = run_batch(
        args.inputs, args.out, scheduler=args.scheduler, workers=args.workers,
        threads_per_worker=args.threads_per_worker, format=args.format,
        transfer_syntax=args.transfer_syntax, cnn=args.cnn,
        dictionary=args.dictionary, blender=args.blender, dose_fraction=args.dose_fraction,
        progress=not args.no_progress, report=args.report)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(summary)
    return 0 if summary.ok else 1


def add_cli(sub: Any) -> None:
    """Register ``hybrid batch`` on the ``hybrid`` command's subparsers."""
    p = sub.add_parser(
        "batch", help="enhance many series on Dask (local processes or a cluster), resumable",
        description="Enhance many ultra-low-dose CT series, one Dask task per series, on a local "
                    "cluster of worker processes or on a running Dask scheduler. Writes "
                    "DIR/manifest.jsonl; re-running the same command skips what is done.",
        epilog="INPUTS: DICOM series folders, .nii/.nii.gz/.h5/.npz/.npy files, or folders "
               "holding them (searched recursively; the outputs mirror their tree). Outputs "
               "keep the input's format unless --format says otherwise. Exit codes: 0 all series "
               "done, 1 some failed (listed, and in the manifest), 2 bad input. Cluster: run "
               "`dask scheduler` on one machine and `dask worker tcp://HOST:8786 --nworkers N "
               "--nthreads 1` on each, then pass --scheduler tcp://HOST:8786 (all must see the "
               "same file paths). Custom models: --cnn DIR, --blender FILE.")
    p.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                   help="a series (DICOM folder, .nii[.gz], .h5, .npz, .npy) or a folder of them")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="output folder (outputs and manifest.jsonl)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="a running Dask scheduler (tcp://host:8786); default: a local cluster")
    p.add_argument("--workers", type=int, metavar="N",
                   help="local worker processes (default: cores / threads per worker)")
    p.add_argument("--threads-per-worker", type=int, default=1, metavar="T",
                   help="compute threads of each worker (TensorFlow, FAISS, BLAS; default 1)")
    p.add_argument("--format", choices=OUTPUT_FORMATS, default="same",
                   help="output format (default: the input's; .npy input gives HDF5)")
    p.add_argument("--transfer-syntax", choices=TRANSFER_CHOICES, default="source",
                   help="DICOM outputs' transfer syntax (lossless): 'source' (default) keeps "
                        "each input's")
    p.add_argument("--dose-fraction", type=float, metavar="F",
                   help="the scans' dose relative to normal dose; recorded, informational")
    p.add_argument("--report", action="store_true",
                   help="also write an HTML report per series and an index page to DIR/reports/")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--cnn", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument("--dictionary", metavar="DIR|shipped",
                   help="also join a patch dictionary: 'shipped' or a PatchDictionary folder "
                        "(off by default; docs/dictionary.md)")
    p.add_argument("--blender", type=Path, metavar="FILE", help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_batch)
