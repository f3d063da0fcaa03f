"""Issue 16, speed: distil the plain body CNN into a cheaper student (an experiment).

    python experiments/distill_body.py [--student experiments/configs/blind_shuffle.json]
        [--init WEIGHTS] [--epochs 12] [--steps 250] [--work experiments/runs/distill]

The teacher is the plain pair shipped until the blind U-Net replaced it (``TEACHER``,
``experiments/checkpoints/plain_pair/model``).  Its body model (10 layers of 32 filters at
full resolution, 0.26 s on a 352 x 448 body box on this AVX2 CPU) kept ``make bench`` over
60 s per 250 slices there.  The
student (the config's ``recipe.cnn.body``, by default the FFDNet-style "shuffle" stack of
12 x 32 at half resolution, 2.4x faster) learns the teacher's output instead of the noisy
normal dose: the targets are the teacher body model's restoration of the same low-dose
inputs the teacher was trained on (its ``training_cases``, nominal 2 % and aug 1-10 %
dose), monitored on the calibration patients (also the teacher's training cases).  No
held-out patient is touched.  ``--init`` starts from weights of the same architecture (a
model trained on the normal dose, e.g. the abandoned 9-epoch run of
``train_default.py --config blind_shuffle``), or ``--init prune``: a plain student of the
teacher's depth and fewer filters starts as the teacher with, in each layer, the filters
that carry the most signal (mean activation on the training inputs times the weight the
next layer gives them) kept and the others cut.  ``--student`` is a recipe config (its
``recipe.cnn.body``) or a CNN config JSON.

Writes ``<work>/model`` (a CNN pair: the teacher's lung model, the shipped one, and the student as body),
``<work>/body`` (log, best weights, progress figure) and ``<work>/command.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
TEACHER = "experiments/checkpoints/plain_pair/model"  # the plain pair shipped before the U-Net


def _teacher_targets(pair, arr, body):
    """The teacher body model's restoration of ``arr`` (HU) on each slice's body box grown
    by 16 pixels, beyond its 10-pixel receptive-field reach, so inside the body it is what
    the product computes (the product grows the box by 20 for the lung model's reach);
    beyond the box, the input lightly smoothed, as in the product."""
    from hybrid.cnn.infer import _grid_box

    boxes = [_grid_box(plane, 16, 1) for plane in body]
    return pair._run_boxes("body", arr, boxes, flip=False)


def _pruned_weights(teacher_model, student, slices):
    """Weights for ``student`` (plain, the teacher's depth, fewer filters): the teacher's
    most used filters of each layer (see the module docstring)."""
    import numpy as np

    from hybrid.cnn._tf import keras

    def convs_of(model):
        return [lay for lay in model.layers if isinstance(lay, keras.layers.Conv2D)]

    convs = convs_of(teacher_model)
    acts = keras.Model(teacher_model.input, [c.output for c in convs[:-1]])(slices[..., None])
    keep_in = np.arange(1)
    for i, (conv, target) in enumerate(zip(convs, convs_of(student))):
        k, b = conv.get_weights()
        n_out = target.get_weights()[0].shape[-1]
        if i < len(convs) - 1:
            energy = np.maximum(np.asarray(acts[i]), 0).mean(axis=(0, 1, 2))
            nxt = np.sqrt((convs[i + 1].get_weights()[0] ** 2).sum(axis=(0, 1, 3)))
            keep_out = np.sort(np.argsort(energy * nxt)[::-1][:n_out])
        else:
            keep_out = np.arange(k.shape[-1])
        target.set_weights([k[:, :, keep_in][..., keep_out], b[keep_out]])
        keep_in = keep_out
    return student.get_weights()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", type=Path, default=ROOT / "experiments/configs/blind_shuffle.json")
    ap.add_argument("--init", help="initial student weights (same architecture), or 'prune'")
    ap.add_argument("--data", type=Path, default=ROOT / "data")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=None, help="default: the student config's")
    ap.add_argument("--reduce-lr-patience", type=int, default=3)
    ap.add_argument("--work", type=Path, default=ROOT / "experiments/runs/distill")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import numpy as np
    from tqdm.auto import tqdm

    from hybrid.cnn._tf import keras
    from hybrid.cnn.config import CNNConfig
    from hybrid.cnn.infer import CNNPair
    from hybrid.cnn.sampler import TrainingPair
    from hybrid.cnn.train import train_model
    from hybrid.data import iter_cases, load_case
    from hybrid.recipe import load_split

    t0 = time.perf_counter()
    teacher = CNNPair.load(ROOT / TEACHER)
    seen = set(teacher.metadata["training_cases"])
    split = load_split()
    student_cfg = json.loads(args.student.read_text())
    student_cfg = student_cfg["recipe"]["cnn"]["body"] if "recipe" in student_cfg else student_cfg
    if args.lr is not None:
        student_cfg = dict(student_cfg, learning_rate=args.lr)
    config = CNNConfig.from_dict(student_cfg)
    pairs, monitor = [], []
    entries = [(e, p) for e, p in iter_cases(args.data) if e["case_id"] in seen]
    for e, path in tqdm(entries, desc="teacher targets", unit="case"):
        if e["patient_id"] in split.held_out_patients:
            raise SystemExit(f"refused: {e['case_id']} belongs to a held-out patient")
        case = load_case(path)
        for tag, uld in (("", case.uld.array), ("~aug", case.uld_aug)):
            p = TrainingPair(uld, _teacher_targets(teacher, uld, case.body_mask),
                             case.lung_mask, case.body_mask, case.case_id + tag)
            pairs.append(p)  # the teacher's training cases, both doses
            if e["patient_id"] in split.calibration and not tag:  # as the recipe monitors
                monitor.append(p)
    init = args.init
    if init == "prune":  # the teacher's most used filters, on the first training slices
        from hybrid.cnn.models import build_model

        x = config.normalize(np.concatenate([p.uld[len(p.uld) // 2:][:2] for p in pairs[:8]]))
        x = x[:, 96:416, 96:416]  # central 320 x 320: the body
        student = build_model(config)
        pruned = _pruned_weights(teacher.body_model, student, x)
        gap = np.sqrt(np.mean((np.asarray(student(x[..., None]))
                               - np.asarray(teacher.body_model(x[..., None]))) ** 2))
        print(f"pruned start: RMSE {gap * config.hu_per_unit:.1f} HU from the teacher on "
              f"{len(x)} training slices", flush=True)

    class _Init(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if init == "prune":
                self.model.set_weights(pruned)
            elif init is not None:
                self.model.load_weights(str(init))

    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "command.json").write_text(json.dumps(
        {"argv": sys.argv, "student": student_cfg,
         "teacher": f"{TEACHER} body",
         "teacher_digest": teacher.digest, "cases": sorted(p.patient_id for p in pairs),
         "monitor": [p.patient_id for p in monitor], "init": str(init)}, indent=1) + "\n")
    r = train_model(config, pairs, val_pairs=monitor, out_dir=args.work / "body",
                    epochs=args.epochs, steps_per_epoch=args.steps, batch_size=args.batch,
                    val_slices=8, val_patches=min(512, 64 * args.batch),
                    patience=args.epochs, reduce_lr_patience=args.reduce_lr_patience, seed=0,
                    threads=args.threads, tensorboard=False, verbose=0, callbacks=[_Init()])
    meta = {"trained_by": "experiments/distill_body.py " + " ".join(sys.argv[1:]),
            "distilled_from": {"body": TEACHER, "digest": teacher.digest},
            "training_cases": sorted(seen),
            "held_out_patients": dict(teacher.metadata.get("held_out_patients", {})),
            "monitor": {"body": {"val_rmse_hu_vs_teacher": r.val_rmse_hu,
                                 "best_epoch": r.best_epoch, "epochs_run": r.epochs_run,
                                 "train_seconds": r.seconds}},
            "kept_from_previous_pair": ["lung"]}
    pair = CNNPair(teacher.lung_model, r.model, lung_config=teacher.lung_config,
                   body_config=config, metadata=meta)
    pair.save(args.work / "model", overwrite=True)
    print(f"student: val RMSE vs teacher {r.val_rmse_hu:.2f} HU (best epoch {r.best_epoch}), "
          f"{time.perf_counter() - t0:.0f} s; saved {args.work / 'model'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
