"""Forward time of candidate body CNNs on one 352 x 448 body box (a benchmark, never a test).

    python experiments/bench_body_models.py [--seconds 2] [--repeat 3]

Untrained models of each architecture (:func:`hybrid.cnn.models.build_model`), float32,
one ``tf.function`` call per box, the best of ``--repeat`` timing windows; printed as a
Markdown table with the ratio to the shipped layout (10 x 32, plain) measured in the
same process.  Used for ``experiments/results/cnn_compare/speed_students/README.md``.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CANDIDATES = [
    {"depth": 10, "width": 32},
    {"depth": 10, "width": 24},
    {"depth": 10, "width": 20},
    {"depth": 10, "width": 16},
    {"architecture": "shuffle", "depth": 12, "width": 32},
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    import numpy as np

    from hybrid.cnn._tf import tf
    from hybrid.cnn.config import CNNConfig
    from hybrid.cnn.models import build_model

    x = tf.constant(np.random.default_rng(0).normal(0, 0.1, (1, 352, 448, 1)).astype(np.float32))
    rows = []
    for kw in CANDIDATES:
        cfg = CNNConfig(region="body", patch_size=64, kernel_size=3, residual=True,
                        loss="huber", **kw)
        model = build_model(cfg)
        fn = tf.function(lambda t, m=model: m(t, training=False))
        fn(x)
        best = float("inf")
        for _ in range(args.repeat):
            t, n = time.perf_counter(), 0
            while time.perf_counter() - t < args.seconds:
                fn(x)
                n += 1
            best = min(best, (time.perf_counter() - t) / n)
        rows.append((kw, cfg.receptive_field, best))
    base = rows[0][2]
    print("| body model | receptive field px | ms per box | vs 10 x 32 |\n|---|---:|---:|---:|")
    for kw, rf, s in rows:
        name = f"{kw.get('architecture', 'plain')} {kw['depth']} x {kw['width']}"
        print(f"| {name} | {rf} | {1000 * s:.0f} | {base / s:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
