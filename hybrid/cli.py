"""The ``hybrid`` command line.

Exit codes: 0 success, 1 unexpected failure, 2 bad usage or bad input
(the message says what was expected, what was received and how to fix it).
Patient identifiers are never printed or logged; series are named by UID.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hybrid import __version__

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


def _cmd_info(args: argparse.Namespace) -> int:
    import numpy as np

    import hybrid
    from hybrid.lung import body_mask
    from hybrid.physics import estimate_noise_hu

    vol = hybrid.load(args.input, series_uid=args.series)
    arr = vol.array
    body = body_mask(vol)
    info = {
        "source": str(args.input),
        "modality": vol.provenance.modality,
        "series_uid": vol.provenance.series_uid,
        "description": vol.provenance.description,
        "kernel": vol.provenance.kernel,
        "shape_zyx": list(vol.shape),
        "spacing_zyx_mm": [round(s, 4) for s in vol.spacing],
        "hu_min": float(arr.min()),
        "hu_max": float(arr.max()),
        "hu_median_body": float(np.median(arr[body])) if body.any() else None,
        "estimated_noise_hu": round(float(estimate_noise_hu(arr, mask=body)), 1),
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybrid",
        description="Ultra-low-dose chest CT restoration (CNN pair + FAISS patch dictionary).",
    )
    parser.add_argument("--version", action="version", version=f"hybrid {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="describe a CT series or volume file",
                       description="What the series is: shape, spacing, HU range, estimated noise.")
    p.add_argument("input", type=Path, help="DICOM folder, .nii[.gz], .h5, .npy or .npz")
    p.add_argument("--series", metavar="UID", help="series to read when a folder holds several")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    from hybrid.data import add_cli as add_data_cli

    add_data_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(args.func(args) or EXIT_OK)
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"hybrid {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
