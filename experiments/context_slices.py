"""Does the body CNN gain from its neighbouring slices? (issue 16, an experiment; 2.5-D input)

Every shipped model restores one slice at a time. A CT volume has more: the slices above
and below show nearly the same anatomy with *independent* noise (the simulator draws each
slice's noise on its own, as a scanner's quantum noise is). This script measures what a
body model that sees them (``uld[z-1]``, ``uld[z+1]`` as two extra input channels) gains.

The model is the shipped blind U-Net body model with its first convolution widened from 1
to 3 input channels; the two new channels start at zero weight, so at step 0 it is the
shipped model exactly (checked here before training). It is then fine-tuned as
``experiments/continue_body.py`` fine-tunes the 1-slice model (the recipe's CNN cases at
their nominal and aug dose, patch seed 1, batch 16, ``--lr``), on 96 px patches of 3
slices: the same flips and 90-degree rotations on all three, and the two neighbours
swapped at random (the model is symmetric in z by training). At the first and last slice
of a series, and on single-slice cases, the missing neighbour is the centre slice itself
(so it also learns to do without). The lung model is the shipped one.

Scored on the held-out patients (never trained on) at simulated doses of 2, 10 and 25 %
(``hybrid.physics.simulate_low_dose``, their kernel class; two central slices each, with
one slice more on each side for the context), CNN only: the shipped pair, and the shipped
pair with its body model replaced by the 2.5-D one (the same lung model and lung/body
blend weight). Body RMSE (HU), body outside the lungs RMSE, and both SSIMs.

The held-out slices are thick: P12 is a 15 mm phantom slab, A0001 5 mm. A thin phantom is
no substitute: the phantom is not coherent along z at that scale (two noise-free 2 mm
neighbours of P12 differ by 170-290 HU RMS inside the body, a third of the pixels by more
than 50 HU; the real 2 mm itkelastix thorax's neighbours differ by 75 HU with their noise).
The real thin series (pancreas 3 mm, itkelastix and totalseg 2 mm) are all training cases. ::

    .venv/bin/python experiments/context_slices.py train --epochs 40
    .venv/bin/python experiments/continue_body.py --epochs 40 --lr 5e-4 --batch 16 --seed 1 \
        --out experiments/runs/context_control/model      # the control: 1 slice, as long
    .venv/bin/python experiments/context_slices.py score \
        --control experiments/runs/context_control/model

Writes ``experiments/runs/context/`` (model, log) and
``experiments/results/context_slices/`` (``scores.json``, ``scores.md``).
Nothing here touches ``hybrid/assets``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RUN = REPO / "experiments" / "runs" / "context"
RESULTS = REPO / "experiments" / "results" / "context_slices"
SHIPPED = REPO / "hybrid" / "assets" / "cnn"


# ----------------------------------------------------------------------------- the data
def neighbours(stack: np.ndarray) -> np.ndarray:
    """(Z, Y, X) -> (Z, Y, X, 2): each slice's previous and next slice (the slice itself at
    the ends of the stack)."""
    prev = np.concatenate([stack[:1], stack[:-1]], axis=0)
    nxt = np.concatenate([stack[1:], stack[-1:]], axis=0)
    return np.stack([prev, nxt], axis=-1)


def context_sampler(pairs, *, patch_size: int, seed: int, augment: bool = True):
    """A :class:`~hybrid.cnn.sampler.PatchSampler` of body patches whose ``sample3`` also
    returns the two neighbouring slices' patches; with ``augment`` the neighbours are swapped
    at random and each patch flipped and rotated (as the sampler's own ``sample``)."""
    from hybrid.cnn.sampler import PatchSampler

    class ContextSampler(PatchSampler):
        def sample3(self, n: int):
            p = self.patch_size
            uld = np.empty((n, 3, p, p), np.float32)  # centre, previous, next
            nd = np.empty((n, p, p), np.float32)
            for j, (pair, k, rows, cols) in enumerate(self.positions(n)):
                ks = [k, max(k - 1, 0), min(k + 1, pair.shape[0] - 1)]
                if self.augment and self.rng.integers(2):
                    ks[1], ks[2] = ks[2], ks[1]
                a, b = pair.uld[ks, rows, cols], pair.nd[k, rows, cols]
                if self.augment:
                    rot, flip = int(self.rng.integers(4)), bool(self.rng.integers(2))
                    if flip:
                        a, b = a[..., ::-1], b[..., ::-1]
                    a, b = np.rot90(a, rot, axes=(-2, -1)), np.rot90(b, rot)
                uld[j], nd[j] = a, b
            return uld, nd

    return ContextSampler(pairs, region="body", patch_size=patch_size, seed=seed,
                          augment=augment)


def _batch(sampler, config, n):
    uld, nd = sampler.sample3(n)
    x = config.normalize(uld)
    return ({"uld": x[:, 0, ..., None], "noise": np.moveaxis(x[:, 1:], 1, -1)},
            config.normalize(nd)[..., None])


# ----------------------------------------------------------------------------- the model
def context_model(shipped, config, dtype=None):
    """The shipped body U-Net with 3 input channels, the 2 new ones at zero weight."""
    from hybrid.cnn.models import build_model

    model = build_model(config, seed=0, dtype=dtype)
    for layer in model.layers:
        old_w = _layer(shipped, layer.name)
        if not layer.weights or old_w is None:
            continue
        new = []
        for w_new, w_old in zip(layer.get_weights(), old_w.get_weights()):
            if w_new.shape == w_old.shape:
                new.append(w_old)
            else:  # the first convolution: (3, 3, 1, C) -> (3, 3, 3, C)
                w = np.zeros_like(w_new)
                w[:, :, : w_old.shape[2]] = w_old
                new.append(w)
        layer.set_weights(new)
    return model


def _layer(model, name):
    try:
        return model.get_layer(name)
    except ValueError:
        return None


def forward_context(model, config, stack_hu: np.ndarray) -> np.ndarray:
    """The 2.5-D body model on a stack of whole slices (Z, Y, X) in HU; returns HU."""
    from hybrid.cnn.unet import forward_padded

    x = config.normalize(stack_hu)
    nb = neighbours(x)
    out = [forward_padded(model, config, x[i:i + 1], noise=nb[i:i + 1]) for i in range(len(x))]
    return config.denormalize(np.concatenate(out))


# ----------------------------------------------------------------------------- commands
def train(args) -> None:
    from hybrid.cnn._tf import keras, tf
    from hybrid.cnn.infer import CNNPair
    from hybrid.cnn.models import compile_model, set_threads
    from hybrid.data import iter_cases, load_case
    from hybrid.recipe import assign_cases, dtype_policy, load_split, training_pairs

    set_threads(args.threads)
    split = load_split()
    held = set(split.held_out_patients)
    cases = [load_case(p) for e, p in iter_cases(args.data) if e["patient_id"] not in held]
    pairs, monitor = training_pairs(assign_cases(cases, split))
    shipped = CNNPair.load(SHIPPED)
    config = dataclasses.replace(shipped.body_config, noise_input=True, name="body-unet-context",
                                 learning_rate=args.lr)
    model = compile_model(context_model(shipped.body_model, config, dtype_policy("auto")), config)

    sampler = context_sampler(pairs, patch_size=config.patch_size, seed=args.seed)
    val = context_sampler(monitor, patch_size=config.patch_size, seed=0, augment=False)
    vx, vy = _batch(val, config, 512)
    # at step 0 the widened model is the shipped one
    one = {k: v[:8] for k, v in vx.items()}
    d = np.abs(np.asarray(model(one)) - np.asarray(shipped.body_model(one["uld"]))).max()
    logging.info("widened model vs shipped at step 0: max |difference| %.2e (normalised)", d)

    def gen():
        while True:
            yield _batch(sampler, config, args.batch)

    p = config.patch_size
    spec = ({"uld": tf.TensorSpec((None, p, p, 1), tf.float32),
             "noise": tf.TensorSpec((None, p, p, 2), tf.float32)},
            tf.TensorSpec((None, p, p, 1), tf.float32))
    ds = tf.data.Dataset.from_generator(gen, output_signature=spec).prefetch(2)
    RUN.mkdir(parents=True, exist_ok=True)
    best = RUN / "best.weights.h5"
    cbs = [keras.callbacks.CSVLogger(str(RUN / "log.csv")),
           keras.callbacks.ModelCheckpoint(str(best), save_best_only=True, save_weights_only=True),
           keras.callbacks.ReduceLROnPlateau(factor=0.5, patience=8)]
    t0 = time.perf_counter()
    model.fit(ds, epochs=args.epochs, steps_per_epoch=args.steps,
              validation_data=(vx, vy), callbacks=cbs, verbose=0)
    model.load_weights(str(best))
    (RUN / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1) + "\n")
    (RUN / "trained_by.txt").write_text(
        "experiments/context_slices.py " + " ".join(sys.argv[1:])
        + f"\nfrom {SHIPPED} body model; {time.perf_counter() - t0:.0f} s\n")
    logging.info("trained in %.0f s", time.perf_counter() - t0)


def score(args) -> None:
    from hybrid.cnn.config import CNNConfig
    from hybrid.cnn.infer import CNNPair
    from hybrid.cnn.models import build_model
    from hybrid.data import load_case
    from hybrid.evaluate.cases import case_entries, case_file, central_slices, kernel_class
    from hybrid.evaluate.scoring import score_methods
    from hybrid.physics import simulate_low_dose
    from hybrid.recipe import load_split

    shipped = CNNPair.load(SHIPPED).with_settings(precision="float32")  # both models in float32
    config = CNNConfig(**json.loads((RUN / "config.json").read_text()))
    model = build_model(config, seed=0)
    model.load_weights(str(RUN / "best.weights.h5"))
    control = (CNNPair.load(args.control).with_settings(precision="float32")
               if args.control else None)
    held = set(load_split().held_out_patients)
    rows, spacing = [], {}
    for e in [e for e in case_entries(args.data) if e["patient_id"] in held]:
        cid = e["case_id"]
        slab = central_slices(int(e["n_slices"]), args.slices + 2)
        case = load_case(case_file(args.data, e), slices=slice(slab[0], slab[-1] + 1))
        spacing[cid] = list(case.uld.spacing)
        source = case.uld.with_array(case.nd)
        idx = slice(1, len(slab) - 1)
        nd, lung, body = case.nd[idx], case.lung_mask[idx], case.body_mask[idx]
        for f in args.doses:
            rng = np.random.default_rng([args.seed, int(f * 1e4), len(slab)])
            uld = simulate_low_dose(source, f, rng=rng, kernel=kernel_class(e),
                                    progress=False).array
            imgs = {"input": uld[idx],
                    **_proposals(shipped, model, config, control, uld, lung, idx)}
            scored = score_methods(imgs, nd, lung, body)
            for m in imgs:
                met = scored[m]["metrics"]
                rows.append({"case": cid, "dose_fraction": f, "method": m,
                             "rmse_hu": float(met["body"]["rmse_hu"]),
                             "rmse_outside_lungs_hu": float(met["non_lung"]["rmse_hu"]),
                             "ssim_lung": float(met["body"]["ssim_lung"]),
                             "ssim_soft_tissue": float(met["body"]["ssim_soft_tissue"])})
            logging.info("%s %.2f: %s", cid, f, {r["method"]: round(r["rmse_hu"], 2)
                                                  for r in rows[-len(imgs):]})
    real = _real_pairs(shipped, model, config, control)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scores.json").write_text(json.dumps(
        {"rows": rows, "spacing_mm": spacing, "real_pairs": real}, indent=1) + "\n")
    lines = ["# The body CNN with its neighbouring slices (CNN only, held-out patients)", "",
             f"`python experiments/context_slices.py {' '.join(sys.argv[1:])}`: body RMSE HU / body outside the "
             "lungs RMSE HU / SSIM lung (−600/1500) / SSIM soft tissue (40/400); "
             f"{args.slices} central slices per case, simulated dose (seed {args.seed}).", "",
             "| case | dose | " + " | ".join(imgs) + " | 3 slices vs the last 1-slice column |",
             "|---|---:|" + "---:|" * (len(imgs) + 1)]
    k = len(imgs)
    for i in range(0, len(rows), k):
        group = rows[i:i + k]
        cells = [f"{r['rmse_hu']:.2f} / {r['rmse_outside_lungs_hu']:.2f} / {r['ssim_lung']:.3f}"
                 f" / {r['ssim_soft_tissue']:.3f}" for r in group]
        b, c = group[-2], group[-1]
        lines.append(f"| {c['case']} | {c['dose_fraction']:g} | " + " | ".join(cells)
                     + f" | {100 * (c['rmse_hu'] / b['rmse_hu'] - 1):+.1f} % "
                     f"(outside lungs {100 * (c['rmse_outside_lungs_hu'] / b['rmse_outside_lungs_hu'] - 1):+.1f} %) |")
    if real:
        names = list(next(iter(real.values())))
        lines += ["", "Real quarter-dose pairs (single slices: the neighbours are the slice "
                  "itself), mean body RMSE HU / SSIM soft tissue: " + "; ".join(
                      f"{m} {np.mean([v[m]['rmse_hu'] for v in real.values()]):.2f} / "
                      f"{np.mean([v[m]['ssim_soft_tissue'] for v in real.values()]):.3f}"
                      for m in names) + "."]
    (RESULTS / "scores.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _proposals(shipped, model, config, control, stack, lung, idx):
    """CNN-only proposals for the slices ``idx`` of ``stack`` (HU) with lung mask ``lung`` (of
    those slices): the shipped lung model blended with each body model (shipped, the control
    if given, the 3-slice model, which sees the whole stack for the neighbours)."""
    from hybrid.cnn.infer import blend_weight

    x = stack[idx]
    w = blend_weight(lung, sigma=shipped.transition_sigma)
    lung_hu = shipped.predict_region("lung", x)
    bodies = {"cnn (1 slice)": shipped.predict_region("body", x)}
    if control is not None:
        bodies["cnn (1 slice, trained as long)"] = control.predict_region("body", x)
    bodies["cnn (3 slices)"] = forward_context(model, config, stack)[idx]
    return {name: w * lung_hu + (1 - w) * body for name, body in bodies.items()}


def _real_pairs(shipped, model, config, control):
    """The real quarter-dose pairs (check only): the body models as above, no neighbours."""
    from hybrid.evaluate.real_pairs import SPACING, score_on_pairs
    from hybrid.lung import segment

    def restore(ld):
        x = ld.array
        return _proposals(shipped, model, config, control, x, segment(x, spacing=SPACING),
                          slice(None))

    return score_on_pairs(restore)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--steps", type=int, default=250)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("score")
    s.add_argument("--doses", nargs="+", type=float, default=[0.02, 0.1, 0.25])
    s.add_argument("--slices", type=int, default=2)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--control", type=Path, default=None,
                   help="a 1-slice pair fine-tuned as long (experiments/continue_body.py), so "
                        "that the context's gain is told apart from the extra training")
    for p in (t, s):
        p.add_argument("--data", type=Path, default=REPO / "data")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    {"train": train, "score": score}[args.cmd](args)


if __name__ == "__main__":
    main()
