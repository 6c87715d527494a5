"""Augmentations that teach the model more than one scan (docs/augmentation.md).

Volume-level (HU, display stack (Z, H, W), before framing):
  * :class:`RandContrastPhased` — per-structure HU shifts from the labels, drawn from ranges
    typical of non-contrast, arterial and portal-venous phases;
  * :class:`RandSliceThicknessd` — thicker slices by averaging along z, thinner by added noise.
Slice-level (model space, after framing): MONAI's RandAffined (scale ±25 %, rotation ±15°,
shifts), Rand2DElasticd, RandGaussianNoised and RandGaussianSmoothd, plus window/level jitter
applied when HU are windowed.
"""
from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence

import numpy as np
from monai.transforms import (Compose, MapTransform, Rand2DElasticd, RandAffined, RandGaussianNoised,
                              RandGaussianSmoothd, Randomizable)

# HU added over the unenhanced value, (low, high), per structure group and phase. Approximate
# ranges from the contrast-timing literature (see docs/augmentation.md for sources and caveats).
PHASES: dict[str, dict[str, tuple[float, float]]] = {
    "non_contrast": {},
    "arterial": {"aorta_arteries": (150, 300), "spleen": (30, 90), "kidneys": (60, 160), "liver": (5, 25),
                 "pancreas": (40, 90), "portal_splenic_vein": (20, 80), "ivc_veins": (0, 40),
                 "heart": (100, 250), "stomach_wall": (0, 10), "bowel": (5, 30), "muscle": (0, 10)},
    "portal_venous": {"aorta_arteries": (80, 160), "spleen": (50, 90), "kidneys": (80, 150), "liver": (35, 65),
                      "pancreas": (30, 70), "portal_splenic_vein": (100, 170), "ivc_veins": (60, 130),
                      "heart": (80, 150), "stomach_wall": (0, 15), "bowel": (10, 40), "muscle": (5, 20)},
}

# Structure groups in TotalSegmentator "total" label ids (the sample CT's full label map).
TOTALSEG_GROUPS: dict[str, list[int]] = {
    "spleen": [1], "kidneys": [2, 3], "liver": [5], "stomach_wall": [6], "pancreas": [7],
    "aorta_arteries": [52, 65, 66], "heart": [51, 61], "ivc_veins": [62, 63, 67, 68],
    "portal_splenic_vein": [64], "bowel": [18, 19, 20], "muscle": [80, 81, 86, 87, 88, 89],
}


class RandContrastPhased(Randomizable, MapTransform):
    """Shift HU of each labelled structure group by an amount drawn for a random contrast phase.

    ``label_key`` holds a label map (same shape as the image) whose ids ``groups`` assigns to
    groups; each group gets one shift per call, uniform within its phase range, so an organ
    stays homogeneous while organs differ from each other as real phases make them.
    Unlabelled voxels are untouched.
    """

    def __init__(self, keys: Sequence[Hashable], label_key: str, groups: Mapping[str, Sequence[int]],
                 phases: Mapping[str, Mapping[str, tuple[float, float]]] = PHASES,
                 phase_probs: Mapping[str, float] | None = None, prob: float = 1.0):
        MapTransform.__init__(self, keys)
        self.label_key = label_key
        self.groups = {g: list(ids) for g, ids in groups.items()}
        self.phases = phases
        names = list(phases)
        probs = np.array([1.0 if phase_probs is None else phase_probs.get(n, 0.0) for n in names])
        self.phase_names, self.phase_p = names, probs / probs.sum()
        self.prob = prob
        self.phase: str = "non_contrast"
        self.shifts: dict[str, float] = {}

    def randomize(self, data=None) -> None:
        if self.R.rand() >= self.prob:
            self.phase, self.shifts = "non_contrast", {}
            return
        self.phase = str(self.R.choice(self.phase_names, p=self.phase_p))
        self.shifts = {g: float(self.R.uniform(lo, hi)) for g, (lo, hi) in self.phases[self.phase].items()}

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        lab = np.asarray(d[self.label_key])
        for key in self.key_iterator(d):
            img = np.array(d[key], dtype=np.float32, copy=True)
            for group, shift in self.shifts.items():
                ids = self.groups.get(group, [])
                if ids and shift:
                    img[np.isin(lab, ids)] += shift
            d[key] = img
        d["contrast_phase"] = self.phase
        return d


class RandSliceThicknessd(Randomizable, MapTransform):
    """Simulate another slice thickness on a (Z, H, W) stack with z-spacing ``spacing_mm``.

    Thicker slices: average along z with a triangular kernel of the target width (partial
    volume). Thinner slices than acquired cannot be synthesised; their higher noise can, so
    for those Gaussian noise of ``noise_hu · sqrt(spacing/target − 1)`` is added.
    Labels are not changed: a thick slice is labelled by its centre.
    """

    def __init__(self, keys: Sequence[Hashable], spacing_mm: float, range_mm: tuple[float, float] = (1.0, 5.0),
                 noise_hu: float = 12.0, prob: float = 1.0):
        MapTransform.__init__(self, keys)
        self.spacing = float(spacing_mm)
        self.range = range_mm
        self.noise_hu = noise_hu
        self.prob = prob
        self.target = self.spacing

    def randomize(self, data=None) -> None:
        self.target = float(self.R.uniform(*self.range)) if self.R.rand() < self.prob else self.spacing

    def __call__(self, data):
        from scipy.ndimage import convolve1d

        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            img = np.asarray(d[key], dtype=np.float32)
            if self.target > self.spacing * 1.05:
                half = self.target / self.spacing
                n = int(math.ceil(half))
                x = np.arange(-n, n + 1, dtype=np.float64)
                w = np.clip(1 - np.abs(x) / half, 0, None)
                img = convolve1d(img, (w / w.sum()).astype(np.float32), axis=0, mode="nearest")
            elif self.target < self.spacing * 0.95:
                sigma = self.noise_hu * math.sqrt(self.spacing / self.target - 1)
                img = img + self.R.normal(0, sigma, img.shape).astype(np.float32)
            d[key] = img
        d["slice_thickness_mm"] = self.target
        return d


class RandWindowJitter(Randomizable):
    """Random window level/width around L40/W400 (scanner calibration and reconstruction kernels)."""

    def __init__(self, level_shift: float = 20.0, width_scale: tuple[float, float] = (0.85, 1.15), prob: float = 0.8):
        self.level_shift, self.width_scale, self.prob = level_shift, width_scale, prob

    def sample(self) -> tuple[float, float]:
        from .preprocess import WINDOW_LEVEL, WINDOW_WIDTH

        if self.R.rand() >= self.prob:
            return WINDOW_LEVEL, WINDOW_WIDTH
        return (WINDOW_LEVEL + float(self.R.uniform(-self.level_shift, self.level_shift)),
                WINDOW_WIDTH * float(self.R.uniform(*self.width_scale)))


def slice_augmentation(seed: int, rotate_deg: float = 15.0, scale: float = 0.25, shift_px: float = 24.0,
                       elastic_prob: float = 0.15) -> Compose:
    """Model-space geometry/intensity augmentation of {"image": (3,256,256), "label": (1,256,256)}."""
    t = Compose([
        RandAffined(keys=("image", "label"), prob=0.9, rotate_range=(math.radians(rotate_deg),),
                    scale_range=(scale, scale), translate_range=(shift_px, shift_px),
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        Rand2DElasticd(keys=("image", "label"), prob=elastic_prob, spacing=(48, 48), magnitude_range=(1.0, 3.0),
                       mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandGaussianSmoothd(keys=("image",), prob=0.2, sigma_x=(0.3, 1.0), sigma_y=(0.3, 1.0)),
        RandGaussianNoised(keys=("image",), prob=0.3, mean=0.0, std=0.02),
    ])
    t.set_random_state(seed=seed)
    return t
