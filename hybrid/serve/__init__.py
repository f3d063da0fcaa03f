"""``hybrid serve``: enhance ultra-low-dose series beside a PACS, with nobody running a script.

Two ways in, one way out:

- **listener** — a DICOM Storage SCP (:mod:`hybrid.serve.scp`) takes CT
  instances from allow-listed AE titles; a series is complete when no new
  instance came for ``quiet_seconds``;
- **orthanc** — PACS-driven: follow Orthanc's ``/changes`` feed
  (``StableSeries``), select series by a rule (:mod:`hybrid.serve.rules`),
  download them over the REST API;

then enhance with the default models and send the derived series to the PACS
(C-STORE, Orthanc REST or DICOMweb STOW-RS), retrying with backoff.  The
spool (:mod:`hybrid.serve.spool`) makes it crash-safe and idempotent.

Only :func:`add_cli` lives here: pynetdicom and requests are imported by the
submodules when a node runs, never by ``import hybrid``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_cli"]

EXIT_OK, EXIT_FAIL, EXIT_BAD_INPUT = 0, 1, 2


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import sys

    from hybrid.serve.config import load_config
    from hybrid.serve.node import Node
    from hybrid.serve.orthanc import OrthancError, OrthancUnavailable
    from hybrid.serve.spool import SpoolLockedError

    config = load_config(args.config)
    # a service logs its progress (UIDs only); pynetdicom stays at warnings
    logging.getLogger("hybrid.serve").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    from hybrid._logs import quiet_loggers

    quiet_loggers("pynetdicom")  # --verbose: its association details too
    for handler in logging.getLogger().handlers:  # a service's log lines carry the time
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    node = Node(config)
    try:
        if args.check:
            node.check()
            print(f"configuration {args.config} is valid ({config.mode} mode); "
                  + ("Orthanc accepted the credentials" if node.uses_rest else "no REST needed"))
            return EXIT_OK
        node.enhancer  # noqa: B018 - load the models before taking any series
        node.run_forever()
    except OrthancUnavailable as exc:
        if not args.check:
            raise
        print(f"hybrid serve: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OrthancError, SpoolLockedError) as exc:  # wrong credentials, spool taken
        print(f"hybrid serve: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def add_cli(sub) -> None:
    """Register ``hybrid serve`` on the ``hybrid`` command's subparsers."""
    p = sub.add_parser(
        "serve", help="run beside a PACS: receive or fetch series, enhance, send back",
        description="Run as a service: a DICOM listener (Storage SCP) or an Orthanc follower "
                    "takes ultra-low-dose CT series, enhances each once with the default "
                    "models and sends the derived series to the PACS. Stops on SIGTERM/SIGINT; "
                    "a restart resumes pending work.",
        epilog="The configuration is TOML (or YAML): mode, spool, [listener], [orthanc], "
               "[select], [destination], [retry]. The Orthanc password comes from the "
               "environment variable named by [orthanc] password_env (default "
               "HYBRID_ORTHANC_PASSWORD), never from the file. See docs/pacs.md.")
    p.add_argument("config", type=Path, metavar="CONFIG", help="configuration file (.toml/.yaml)")
    p.add_argument("--check", action="store_true",
                   help="validate the configuration and the PACS credentials, then exit")
    p.set_defaults(func=_cmd_serve)
