"""The phantom record (:class:`Phantom`) and :func:`make_patient`, which composes the
anatomy builders in a fixed order on one :class:`~hybrid.phantom.frame.Frame`.

The random generator is shared and drawn from in that order, so the same seed and
options always give the same phantom, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

import hybrid.phantom.airways as airways
import hybrid.phantom.lesions as lesions
import hybrid.phantom.lungs as lungs
import hybrid.phantom.mediastinum as mediastinum
import hybrid.phantom.skeleton as skeleton
import hybrid.phantom.texture as texture
import hybrid.phantom.torso as torso
import hybrid.phantom.vessels as vessels
from hybrid.phantom.frame import Frame, make_frame
from hybrid.volume import Provenance, Volume

__all__ = ["Phantom", "make_patient"]


@dataclass(frozen=True, eq=False)
class Phantom:
    """One synthetic chest ("patient").

    Attributes
    ----------
    truth : ndarray of float32, shape (Z, Y, X)
        Noise-free image in HU.
    lung_mask : ndarray of bool, shape (Z, Y, X)
        Both lungs as a radiologist would outline them: parenchyma including
        the vessels, small airways and nodules inside, excluding the trachea,
        the main bronchi and the mediastinum.
    body_mask : ndarray of bool, shape (Z, Y, X)
        The patient (skin and everything inside), without table or clothing.
    labels : ndarray of uint8, shape (Z, Y, X)
        Dominant tissue class per voxel, codes in :data:`LABELS`.
    spacing : tuple of 3 float
        Voxel spacing (z, y, x) in mm.
    seed : int
        The seed the patient was drawn from.
    hu : dict of str to float
        The nominal HU value drawn for each tissue class.
    nodules : tuple of dict
        One dict per nodule: ``center_mm`` (z, y, x in mm from the volume's
        first voxel), ``diameter_mm``, ``kind`` ("solid" or "ggo").
    params : dict
        The anatomical parameters drawn (sizes in mm), for reporting.
    """

    truth: np.ndarray
    lung_mask: np.ndarray
    body_mask: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    seed: int
    hu: dict[str, float] = field(default_factory=dict)
    nodules: tuple[dict[str, Any], ...] = ()
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.truth.shape  # type: ignore[return-value]

    def to_volume(self) -> Volume:
        """The noise-free truth as a :class:`hybrid.volume.Volume`."""
        return Volume(self.truth, self.spacing, _provenance(self, "truth"))


def _provenance(ph: Phantom, what: str) -> Provenance:
    return Provenance(
        source=None,
        modality="CT",
        description=f"hybrid.phantom seed={ph.seed} {what}",
        derived_from=(f"hybrid.phantom.make_patient(seed={ph.seed})",),
    )


def make_patient(
    seed: int,
    *,
    shape: tuple[int, int, int] = (32, 256, 256),
    pixel_mm: float | None = None,
    slice_mm: float | None = None,
    z_range: tuple[float, float] = (-0.08, 1.04),
    contrast: bool | None = None,
    n_nodules: int | None = None,
    emphysema: float | None = None,
    clothing: bool | None = None,
) -> Phantom:
    """Draw one synthetic chest CT "patient" from a seed.

    Parameters
    ----------
    seed : int
        Patient seed; the same seed and options always give the same phantom.
    shape : tuple of 3 int, keyword-only
        ``(n_slices, ny, nx)``; default ``(32, 256, 256)``.  ``ny`` and ``nx``
        of 64 or more.
    pixel_mm : float, optional
        In-plane pixel size in mm.  Default: a 430 mm field of view
        (``430 / nx``, i.e. 0.84 mm at 512 pixels, as in clinical chest CT).
    slice_mm : float, optional
        Slice spacing (= thickness) in mm.  Default: the anatomical span
        ``z_range`` of this patient's chest divided by ``n_slices``.
    z_range : tuple of 2 float
        Anatomical extent covered, in units of the patient's lung height:
        0 is the lowest point of the lung bases (posterior costophrenic
        recess), 1 the lung apices.  Default ``(-0.08, 1.04)``: upper abdomen
        to the thoracic inlet.  With ``slice_mm`` given, only the centre of
        this range is used (the stack is centred on it).
    contrast : bool, optional
        Intravenous contrast (enhanced blood).  Default: drawn from the seed
        (30 % of patients).
    n_nodules : int, optional
        Number of lung nodules (solid or ground-glass).  Default: drawn (0-3).
    emphysema : float, optional
        Emphysema severity in [0, 1] (0 none).  Default: drawn (most patients 0).
    clothing : bool, optional
        Draw thin clothing folds around the body.  Default: drawn (60 %).

    Returns
    -------
    Phantom
        Truth in HU (float32), masks, labels, spacing (mm) and parameters.

    Examples
    --------
    >>> ph = make_patient(3, shape=(8, 128, 128))
    >>> ph.truth.shape, ph.truth.dtype
    ((8, 128, 128), dtype('float32'))
    """
    shape = tuple(int(s) for s in shape)
    lo_u, hi_u = _check_options(
        shape,
        pixel_mm=pixel_mm,
        slice_mm=slice_mm,
        z_range=z_range,
        n_nodules=n_nodules,
        emphysema=emphysema,
    )

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x7C7]))
    frame = make_frame(
        rng,
        shape,
        pixel_mm=pixel_mm,
        slice_mm=slice_mm,
        z_range=(lo_u, hi_u),
        contrast=contrast,
        n_nodules=n_nodules,
        emphysema=emphysema,
        clothing=clothing,
    )
    table = torso.draw_table(frame)
    lay = mediastinum.draw_layout(frame)
    excl = mediastinum.exclusion_mask(frame, lay)
    window = torso.make_window(frame, table)
    clothes = torso.draw_clothing(frame)
    ribs = skeleton.draw_ribs(frame)

    truth = np.empty(shape, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    lung = np.zeros(shape, dtype=bool)
    body = np.zeros(shape, dtype=bool)
    win = window.win
    for iz in range(shape[0]):
        sl = torso.start_slice(frame, window, clothes, iz)
        skeleton.paint_scapulae(frame, window, sl)
        torso.paint_cavity(window, sl, frame.hu)
        skeleton.paint_ribs(frame, window, ribs, sl)
        skeleton.paint_sternum(frame, window, lay, sl)
        skeleton.paint_spine(frame, window, lay, ribs, sl)
        mediastinum.paint_heart(window, lay, sl, frame.hu)
        mediastinum.paint_abdomen(frame, window, lay, sl)
        in_lung = lungs.paint_lungs(frame, window, lay, sl, excl[iz][win])
        truth[iz] = window.tab_hu_full
        labels[iz] = window.tab_lab_full
        truth[iz][win] = sl.hu
        labels[iz][win] = sl.lab
        lung[iz][win] = in_lung
        body[iz][win] = sl.bdy

    # mediastinal tubes (drawn after the slices, outside the lungs)
    med = np.zeros(shape, dtype=np.float32)
    mediastinum.paint_vessels(frame, lay, truth, labels, lung, body, med)
    airways.paint_central_airways(frame, lay, truth, labels, lung, body, med)
    del med

    nod_list = _paint_inside_lungs(frame, lay, truth, labels, lung)
    texture.add_soft_tissue_texture(frame, truth, body, lung)
    return Phantom(
        truth=truth,
        lung_mask=lung,
        body_mask=body,
        labels=labels,
        spacing=(float(frame.dz), frame.pix, frame.pix),
        seed=int(seed),
        hu={k: float(v) for k, v in frame.hu.items()},
        nodules=tuple(nod_list),
        params=_params(frame, lay, len(nod_list)),
    )


def _check_options(
    shape: tuple[int, ...],
    *,
    pixel_mm: float | None,
    slice_mm: float | None,
    z_range: tuple[float, float],
    n_nodules: int | None,
    emphysema: float | None,
) -> tuple[float, float]:
    """Raise for invalid :func:`make_patient` options; the validated ``z_range``."""
    if len(shape) != 3 or shape[0] < 1 or shape[1] < 64 or shape[2] < 64:
        raise ValueError(
            f"Expected shape (n_slices >= 1, ny >= 64, nx >= 64); received {shape!r}. "
            "Use e.g. shape=(32, 256, 256)."
        )
    if pixel_mm is not None and not (0.1 <= float(pixel_mm) <= 5.0):
        raise ValueError(
            f"Expected pixel_mm between 0.1 and 5 mm; received {pixel_mm!r}. "
            "Leave it unset for a 430 mm field of view."
        )
    if slice_mm is not None and not (0.1 <= float(slice_mm) <= 20.0):
        raise ValueError(f"Expected slice_mm between 0.1 and 20 mm; received {slice_mm!r}.")
    if emphysema is not None and not (0.0 <= float(emphysema) <= 1.0):
        raise ValueError(f"Expected emphysema severity in [0, 1]; received {emphysema!r}.")
    if n_nodules is not None and int(n_nodules) < 0:
        raise ValueError(f"Expected n_nodules >= 0; received {n_nodules!r}.")
    lo_u, hi_u = (float(v) for v in z_range)
    if not hi_u > lo_u:
        raise ValueError(f"Expected z_range (low, high) with high > low; received {z_range!r}.")
    return lo_u, hi_u


def _paint_inside_lungs(
    frame: Frame, lay: mediastinum.Layout, truth: np.ndarray, labels: np.ndarray, lung: np.ndarray
) -> list[dict[str, Any]]:
    """Parenchyma, emphysema, the trees and nodules in the lungs' box; the nodules placed."""
    box = lungs.lung_box(frame, truth, labels, lung)
    if box is None:
        return []
    noise = texture.paint_parenchyma(frame, lay, box)
    if frame.emphysema > 0:
        lesions.paint_emphysema(frame, box, noise)
    vessels.paint_trees(frame, lay, box, noise)
    nod_list = lesions.paint_nodules(frame, box, noise)
    truth[box.sub] = box.t
    labels[box.sub] = box.lab
    return nod_list


def _params(frame: Frame, lay: mediastinum.Layout, n_nodules: int) -> dict[str, Any]:
    """The anatomical parameters drawn (sizes in mm), for :attr:`Phantom.params`."""
    return {
        "lung_height_mm": float(frame.H),
        "body_half_width_mm": float(frame.A0),
        "body_half_depth_mm": float(frame.B0),
        "fat_thickness_mm": float(frame.fat0),
        "contrast": bool(frame.contrast),
        "emphysema": float(frame.emphysema),
        "clothing": bool(frame.clothing),
        "female": frame.female,
        "n_nodules": n_nodules,
        "pixel_mm": frame.pix,
        "slice_mm": float(frame.dz),
        "heart_semi_axes_mm": (float(lay.ah), float(lay.bh), float(lay.ch)),
    }
