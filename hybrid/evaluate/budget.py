"""Budgets of a cross-validation run: training lengths, dictionary size, tuning and test slices."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hybrid.evaluate.tuning import CV_GRIDS, FAST_GRIDS

__all__ = ["CVBudget"]


@dataclass(frozen=True)
class CVBudget:
    """Budgets of one cross-validation run (per fold).

    The defaults are the full run of ``make cv`` (every fold of both sets),
    sized for this project's 2-core machine (run times:
    ``experiments/results/evaluate_notes.md``): short CNN training (4 epochs x
    100 steps per region, far shorter than the shipped pair's, so the CV's CNN,
    and with it the hybrid, is weaker than the shipped one), a 60 k-entry
    dictionary (smaller than the shipped one), baselines tuned on 2 training
    slices per kernel class with :data:`~hybrid.evaluate.tuning.CV_GRIDS`, 4
    central test slices per case.  :meth:`fast` is a smoke run.
    """

    epochs: int = 4
    steps_per_epoch: int = 100
    batch_size: int = 32
    val_slices: int = 4
    max_patches: int = 60_000
    n_heldout: int = 2000
    stride: int = 2
    tune_slices: int = 2
    eval_slices: int | None = 4
    grids: dict[str, dict[str, list[Any]]] = field(default_factory=lambda: CV_GRIDS)
    #: also train on the other set's patients (the shipped pair saw phantoms and real cases)
    other_set: bool = True
    #: (lung, body) patch sizes replacing the shipped configurations' (48, 64): only for
    #: images too small for them (tests); None keeps the shipped ones
    patch_sizes: tuple[int, int] | None = None
    #: shown at the top of the summary
    note: str = ""

    @classmethod
    def fast(cls) -> CVBudget:
        """Tiny budgets for a smoke run (seconds per fold, numbers meaningless)."""
        return cls(epochs=1, steps_per_epoch=4, batch_size=8, val_slices=1, max_patches=20_000,
                   n_heldout=200, stride=3, tune_slices=1, eval_slices=2, grids=FAST_GRIDS,
                   other_set=False,
                   note="**FAST smoke run: tiny budgets; the numbers only show that the path works "
                        "end to end and say nothing about the methods.**")

