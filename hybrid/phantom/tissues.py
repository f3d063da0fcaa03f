"""Tissue classes of the phantom: label codes, published HU ranges, per-patient HU draw."""

from __future__ import annotations

import numpy as np

__all__ = ["LABELS", "HU_RANGES", "AIR_HU", "draw_hu"]

#: Tissue label codes used in :attr:`Phantom.labels`.
LABELS: dict[str, int] = {
    "air": 0,
    "table": 1,
    "clothing": 2,
    "skin": 3,
    "fat": 4,
    "muscle": 5,
    "cortical_bone": 6,
    "trabecular_bone": 7,
    "cartilage": 8,
    "lung": 9,
    "vessel": 10,
    "airway_lumen": 11,
    "airway_wall": 12,
    "blood": 13,
    "myocardium": 14,
    "abdomen": 15,
    "nodule": 16,
    "emphysema": 17,
    "disc": 18,
    "spinal_canal": 19,
}

#: Published HU ranges (low, high) of the tissue classes; each patient draws
#: its nominal values inside these.  Texture adds a few HU around them.
HU_RANGES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -1000.0),
    "fat": (-120.0, -80.0),
    "muscle": (40.0, 60.0),
    "skin": (20.0, 50.0),
    "blood": (35.0, 45.0),
    "blood_contrast": (200.0, 350.0),
    "myocardium": (40.0, 55.0),
    "cortical_bone": (700.0, 1200.0),
    "trabecular_bone": (200.0, 300.0),
    "cartilage": (80.0, 150.0),
    "lung": (-900.0, -800.0),
    "emphysema": (-990.0, -950.0),
    "liver": (50.0, 65.0),
    "disc": (70.0, 100.0),
    "spinal_canal": (10.0, 30.0),
    "solid_nodule": (20.0, 60.0),
    "ggo_nodule": (-700.0, -400.0),
}

#: HU of air (outside the body, airway lumen, bowel gas).
AIR_HU = -1000.0


def draw_hu(rng: np.random.Generator, *, contrast: bool) -> dict[str, float]:
    """The nominal HU value of each tissue class for one patient (inside :data:`HU_RANGES`)."""
    hu = {
        "fat": rng.uniform(-110.0, -90.0),
        "muscle": rng.uniform(45.0, 58.0),
        "skin": rng.uniform(25.0, 45.0),
        "blood": rng.uniform(200.0, 320.0) if contrast else rng.uniform(36.0, 44.0),
        "myocardium": rng.uniform(90.0, 130.0) if contrast else rng.uniform(42.0, 52.0),
        "cortical_bone": rng.uniform(850.0, 1150.0),
        "trabecular_bone": rng.uniform(210.0, 290.0),
        "cartilage": rng.uniform(90.0, 140.0),
        "lung": rng.uniform(-880.0, -830.0),
        "emphysema": rng.uniform(-985.0, -960.0),
        "liver": rng.uniform(52.0, 62.0) + (45.0 if contrast else 0.0),
        "disc": rng.uniform(75.0, 95.0),
        "spinal_canal": rng.uniform(12.0, 28.0),
        "airway_wall": rng.uniform(0.0, 40.0),
        "air": AIR_HU,
    }
    hu["vessel"] = hu["blood"]
    hu["mediastinum"] = hu["fat"] + 20.0
    return hu
