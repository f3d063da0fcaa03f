"""Train (or resume) the noise-aware CNN pair of ``experiments/configs/noise_aware.json``.

    python experiments/train_noise_aware.py --data data --regions body \\
        --work experiments/runs/noise_aware            # start; checkpoints every epoch
    python experiments/train_noise_aware.py --data data --regions body \\
        --work experiments/runs/noise_aware --resume   # continue where it stopped
    ... --resume --stop-after 0                        # only write <work>/model (best so far)

Runs :func:`hybrid.recipe.train` with ``stages=("cnn",)``; the region not trained comes
from ``--keep-cnn`` (a saved pair) or the shipped pair.  Writes ``<work>/<region>/``
(checkpoint/, best.weights.h5, log.csv, progress.png), ``<work>/command.json`` (the
command, the config, the data manifest hash, the git commit) and, at the end, the pair
in ``<work>/model`` (its metadata.json records the same).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="noise_aware", help="name in experiments/configs or path")
    ap.add_argument("--data", default=str(ROOT / "data"), help="paired dataset (make data)")
    ap.add_argument("--work", default=str(ROOT / "experiments" / "runs" / "noise_aware"))
    ap.add_argument("--regions", nargs="+", default=["body"], choices=["lung", "body"])
    ap.add_argument("--resume", action="store_true", help="continue from <work>/<region>/checkpoint")
    ap.add_argument("--keep-cnn", default=None, help="saved CNN pair for the region not trained")
    ap.add_argument("--threads", type=int, default=None, help="TensorFlow CPU threads")
    ap.add_argument("--stop-after", type=int, default=None, metavar="EPOCHS",
                    help="train at most this many more epochs, then write <work>/model from the "
                         "best weights so far (0 with --resume: only write it)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sys.path.insert(0, str(ROOT))
    from hybrid import recipe
    from hybrid.data import load_manifest

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    config = recipe.load_config(args.config)
    if args.stop_after is not None:
        import dataclasses

        noise = {**(config.cnn.noise or {}), "stop_after": args.stop_after}
        config = dataclasses.replace(config, cnn=dataclasses.replace(config.cnn, noise=noise))
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], text=True,
                                capture_output=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    record = {"argv": [sys.executable, *sys.argv], "config": config.to_dict(), "git_commit": commit,
              "data": str(Path(args.data).resolve()), "data_hash": load_manifest(args.data)["hash"]}
    (work / "command.json").write_text(json.dumps(record, indent=1) + "\n")
    keep = None
    if args.keep_cnn:
        from hybrid.cnn.infer import CNNPair

        keep = recipe.Models(cnn=CNNPair.load(args.keep_cnn))
    models = recipe.train(args.data, config=config, stages=("cnn",), regions=args.regions,
                          work=work, keep=keep, threads=args.threads, resume=args.resume)
    models.cnn.metadata["command"] = record
    models.cnn.save(work / "model", overwrite=True)
    for region, r in models.training.items():
        print(f"{region}: best monitor RMSE {r.val_rmse_hu:.1f} HU at epoch {r.best_epoch}/"
              f"{r.epochs_run}; log {r.files['log']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
