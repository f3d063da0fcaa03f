"""The ``hybrid`` command line.

Subcommands: ``info`` (describe a series), ``enhance`` (restore an
ultra-low-dose series), ``data`` (build the paired dataset), ``serve`` (a
DICOM node beside a PACS, :mod:`hybrid.serve`), ``batch`` (many series on
Dask, :mod:`hybrid.batch`).  ``--help`` works everywhere.

Exit codes: 0 success, 1 unexpected failure, 2 bad usage or bad input
(the message says what was expected, what was received and how to fix it).
Patient identifiers are never printed or logged; series are named by UID.

``hybrid enhance`` also takes options left out of its option list because
few need them: ``--cnn DIR``, ``--dictionary DIR`` and ``--blender FILE``
replace the shipped default models (``hybrid/assets/``) with a
``CNNPair.save`` folder, a ``PatchDictionary.save`` folder and a
``Blender.save`` JSON (tests and experiments use them).  They are listed in
``hybrid enhance --help``'s closing note.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hybrid._version import __version__
from hybrid.io.transfer import TRANSFER_CHOICES

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


def _cmd_info(args: argparse.Namespace) -> int:
    import numpy as np

    from hybrid.io import load
    from hybrid.lung import body_mask
    from hybrid.physics import estimate_noise_hu

    vol = load(args.input, series_uid=args.series)
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
        "estimated_noise_hu": None,
    }
    try:  # needs enough soft tissue; a tiny or odd image has none: then say so, do not fail
        info["estimated_noise_hu"] = round(float(estimate_noise_hu(arr, mask=body)), 1)
    except ValueError as exc:
        logging.getLogger("hybrid.cli").info("noise not estimated: %s", exc)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for k, v in info.items():
            print(f"{k:<{width}}  {v}")
    return EXIT_OK


def _maps_path(output: Path) -> Path:
    """``<output without suffixes>_maps.h5`` beside the output."""
    from hybrid.io.formats import strip_suffix

    return output.with_name(f"{strip_suffix(output.name)}_maps.h5")


def _cmd_enhance(args: argparse.Namespace) -> int:
    import time

    from hybrid._progress import working
    from hybrid.io import format_of, load, save, save_options
    from hybrid.io.discover import inside
    from hybrid.pipeline import Enhancer, describe_reading

    src, out = Path(args.input), Path(args.output)
    if not src.exists():
        raise FileNotFoundError(
            f"Expected INPUT to be a DICOM folder or a .dcm/.nii/.nii.gz/.h5/.npy/.npz file; "
            f"nothing exists at {src}."
        )
    # default: a derived DICOM series, unless OUTPUT's suffix names another format
    # (.nii/.nii.gz, .h5/.hdf5, .npy, .npz); hybrid.io.format_of says "dicom" otherwise
    fmt = args.format or format_of(out)
    # refuse before the (long) run what hybrid.save would refuse after it
    if out.resolve() == src.resolve() or (src.is_dir() and inside(out, src)):
        raise ValueError(
            f"Expected an OUTPUT outside the input; received {out}, which is "
            f"{'the input itself' if out.resolve() == src.resolve() else 'inside the input folder'}. "
            "hybrid never writes over or into its input: choose another output path."
        )
    maps_path = _maps_path(out) if args.maps else None
    for p in (out, maps_path, args.report):
        if p is not None and p.exists() and not args.overwrite:
            raise FileExistsError(
                f"Expected a new output path; {p} already exists. Choose another output, "
                "remove it, or pass --overwrite."
            )
    progress = not args.no_progress
    with working("hybrid: reading the series", enabled=progress):
        vol = load(src, series_uid=args.series)
    # after=0: TensorFlow's import silences stderr for a few seconds (hybrid._logs)
    models = "TensorFlow, CNN pair" + (", patch dictionary" if args.dictionary else "")
    with working(f"hybrid: loading the models ({models})", enabled=progress, after=0):
        enhancer = Enhancer(cnn=args.cnn, dictionary=args.dictionary, blender=args.blender,
                            allow_uncalibrated=args.allow_uncalibrated, views=args.views)
    enhancer.prepare(progress=progress)  # one-off work, outside the timing below
    t0 = time.perf_counter()
    want_maps = args.maps or args.report is not None
    res = enhancer.enhance(vol, dose_fraction=args.dose_fraction, return_maps=want_maps,
                           progress=progress)
    seconds = time.perf_counter() - t0
    enhanced, maps = res if want_maps else (res, None)
    with working(f"hybrid: writing the {fmt} output", enabled=progress):
        extra = {"transfer_syntax": args.transfer_syntax} if fmt == "dicom" else {}
        saved = save(enhanced, out, format=fmt, overwrite=args.overwrite,
                     **save_options(enhanced, fmt), **extra)
    print(f"enhanced {vol.shape[0]} slice(s) of {vol.shape[1]}x{vol.shape[2]} in {seconds:.1f} s")
    print(describe_reading(enhancer.last_info["input"]))
    if fmt == "dicom":
        print(f"wrote derived DICOM series {saved.series_uid} to {saved.path}")
    else:
        print(f"wrote {fmt} {saved.path}")
    if maps_path is not None:
        with working("hybrid: writing the maps", enabled=progress):
            maps.save(maps_path, spacing=vol.spacing, overwrite=args.overwrite)
        print(f"wrote maps (masks, proposals, distance, source map) {maps_path}")
    if args.report is not None:
        from hybrid.series_report import write_report

        with working("hybrid: writing the report", enabled=progress):
            write_report(args.report, vol, enhanced, maps, enhancer.last_info,
                         overwrite=args.overwrite)
        print(f"wrote report {args.report}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybrid",
        description="Ultra-low-dose chest CT restoration (CNN pair, calibrated blender, optional "
                    "FAISS patch dictionary).",
    )
    parser.add_argument("--version", action="version", version=f"hybrid {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details, and the libraries' own start-up logs "
                             "(TensorFlow, absl, CUDA)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="describe a CT series or volume file",
                       description="What the series is: shape, spacing, HU range, estimated noise.")
    p.add_argument("input", type=Path, help="DICOM folder, .nii[.gz], .h5, .npy or .npz")
    p.add_argument("--series", metavar="UID", help="series to read when a folder holds several")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser(
        "enhance", help="restore an ultra-low-dose CT series (CNN pair + blender)",
        description="Enhance an ultra-low-dose chest CT: lung segmentation, the CNN pair proposes "
                    "a normal-dose image, the calibrated blender gives a cleaner input back mostly "
                    "as it came (and, with --dictionary, joins the patch dictionary's proposal). "
                    "Research software, no diagnostic claim.",
        epilog="The default output format follows OUTPUT's suffix (.nii/.nii.gz, .h5/.hdf5, "
               ".npy, .npz); an OUTPUT without one is a derived DICOM series (new series and "
               "instance UIDs, same study; a fresh study for non-DICOM input). The input is "
               "never overwritten, nor written into. "
               "Custom models (replace the shipped defaults in hybrid/assets): --cnn DIR "
               "(CNNPair folder), --blender FILE (Blender JSON).")
    p.add_argument("input", type=Path, metavar="INPUT",
                   help="DICOM folder (or .dcm), .nii[.gz], .h5, .npy or .npz")
    p.add_argument("output", type=Path, metavar="OUTPUT",
                   help="output: a folder for DICOM, a file otherwise")
    p.add_argument("--format", choices=("dicom", "nifti", "hdf5"),
                   help="output format (default: from OUTPUT's suffix; none: DICOM)")
    p.add_argument("--series", metavar="UID", help="series to read when a folder holds several")
    p.add_argument("--maps", action="store_true",
                   help="also write OUTPUT_maps.h5 beside the output: lung/body masks, the CNN's "
                        "proposal, noise ratio, the input's and dictionary's shares (with "
                        "--dictionary also its proposal and distance)")
    p.add_argument("--report", type=Path, metavar="HTML",
                   help="also write a self-contained HTML page: before/after in the lung and "
                        "soft-tissue windows, source map, noise before/after, settings, "
                        "timings")
    p.add_argument("--dose-fraction", type=float, metavar="F",
                   help="the scan's dose relative to normal dose (e.g. 0.02); recorded, "
                        "currently informational")
    p.add_argument("--transfer-syntax", choices=TRANSFER_CHOICES, default="source",
                   help="DICOM output's transfer syntax (all lossless): 'source' (default) keeps "
                        "the input's (a lossy one's lossless sibling; Explicit VR Little Endian "
                        "for non-DICOM input)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--views", type=int, choices=(1, 2, 4, 8), default=1,
                   help="run the CNNs on this many mirrored/transposed views of each slice and "
                        "average them: N times the CNN's time; 4 lowered the held-out error by "
                        "2-4 %% (docs/results.md). Default 1")
    p.add_argument("--cnn", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    p.add_argument("--dictionary", metavar="DIR|shipped",
                   help="also join a patch dictionary: 'shipped' (hybrid/assets/dictionary) or a "
                        "PatchDictionary folder. Off by default: on held-out patients it lowered "
                        "the error by at most 0.12 %% for about 47 s more per 250 slices "
                        "(docs/dictionary.md)")
    p.add_argument("--blender", type=Path, metavar="FILE", help=argparse.SUPPRESS)
    p.add_argument("--allow-uncalibrated", action="store_true",
                   help="run models the blender was not calibrated with (experiments only)")
    p.set_defaults(func=_cmd_enhance)

    from hybrid.data import add_cli as add_data_cli

    add_data_cli(sub)
    from hybrid.serve import add_cli as add_serve_cli

    add_serve_cli(sub)
    from hybrid.batch import add_cli as add_batch_cli

    add_batch_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from hybrid._logs import set_verbose

    set_verbose(args.verbose)  # TensorFlow's start-up chatter only with --verbose
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(args.func(args) or EXIT_OK)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as exc:
        print(f"hybrid {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: say so, keep the traceback for -v
        logging.getLogger("hybrid.cli").debug("traceback", exc_info=True)
        print(f"hybrid {args.command}: unexpected error ({type(exc).__name__}): {exc} "
              "(run with -v for the traceback)", file=sys.stderr)
        return EXIT_FAIL


def entry() -> None:  # pragma: no cover - the console script; tests call main()
    """The ``hybrid`` console script: :func:`main`, then :func:`hybrid._progress.exit_now`
    (no 2 s of silence while TensorFlow is torn down)."""
    from hybrid._progress import exit_now

    exit_now(main())


if __name__ == "__main__":  # pragma: no cover
    entry()
