"""Appearance and field-of-view simulation for pseudo-patients (docs/augmentation.md).

Every pixel of a pseudo-patient comes from one non-contrast 3 mm scan, so the localiser is
shown that scan's anatomy-independent appearance changed per labelled structure (docs/augmentation.md):

* **physiological phases** over every structure of the full TotalSegmentator map: native,
  arterial / CT angiography (aorta 250–600 HU), portal-venous, delayed; renal cortex and
  medulla separately (the cortex is the outer shell of the kidney); stomach and bowel contents
  as gas, water or positive oral contrast;
* **SynthSeg-style** random HU offsets per structure (Billot et al., 2023);
* **arms** beside the trunk and a **scanner table** below the back, which the sample lacks;
* **scanner**: noise, kernel sharpness (blur or unsharp mask), slice thickness;
* **field of view**: tight in-plane reconstructions (down to 150 mm) and thin z-slabs,
  presented the way inference presents them (edge-replicated to the network's input size).

All transforms act on (X, Y, Z) arrays in canonical RAS at the localiser's grid and take a
``numpy.random.Generator``; HU ranges are module constants so docs and tests read them.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

# Structure groups by TotalSegmentator name (prefix match). Anything unlisted keeps its native HU.
GROUP_PATTERNS: dict[str, tuple[str, ...]] = {
    "arteries": ("aorta", "brachiocephalic_trunk", "subclavian_artery", "common_carotid_artery", "iliac_artery"),
    "heart": ("heart", "atrial_appendage"),
    "portal_splenic_vein": ("portal_vein_and_splenic_vein",),
    "systemic_veins": ("inferior_vena_cava", "superior_vena_cava", "brachiocephalic_vein", "iliac_vena",
                       "pulmonary_vein"),
    "spleen": ("spleen",),
    "liver": ("liver",),
    "pancreas": ("pancreas",),
    "kidneys": ("kidney_left", "kidney_right"),
    "adrenals": ("adrenal_gland",),
    "stomach": ("stomach",),
    "bowel": ("small_bowel", "duodenum", "colon", "esophagus"),
    "bladder": ("urinary_bladder",),
    "muscle": ("gluteus", "autochthon", "iliopsoas"),
    "bone": ("vertebrae", "sacrum", "rib", "hip", "femur", "sternum", "humerus", "scapula", "clavicula",
             "costal_cartilages", "skull"),
}

# HU added to the native value per group and phase, (low, high). The kidney is split into
# cortex and medulla and hollow organs into wall and contents (see ``_split_shells``).
# Sources and caveats: docs/augmentation.md.
PHASES: dict[str, dict[str, tuple[float, float]]] = {
    "native": {},
    "arterial": {"arteries": (210, 560), "heart": (120, 420), "portal_splenic_vein": (20, 110),
                 "systemic_veins": (0, 60), "spleen": (40, 110), "liver": (5, 30), "pancreas": (50, 110),
                 "kidney_cortex": (120, 230), "kidney_medulla": (15, 60), "adrenals": (20, 60),
                 "stomach_wall": (20, 60), "bowel_wall": (20, 60), "muscle": (0, 15)},
    "portal_venous": {"arteries": (100, 190), "heart": (80, 170), "portal_splenic_vein": (120, 190),
                      "systemic_veins": (80, 150), "spleen": (60, 100), "liver": (40, 75), "pancreas": (40, 80),
                      "kidney_cortex": (100, 165), "kidney_medulla": (80, 145), "adrenals": (20, 50),
                      "stomach_wall": (20, 50), "bowel_wall": (20, 50), "muscle": (5, 20)},
    "delayed": {"arteries": (40, 100), "heart": (40, 100), "portal_splenic_vein": (50, 95),
                "systemic_veins": (50, 100), "spleen": (40, 70), "liver": (30, 55), "pancreas": (20, 50),
                "kidney_cortex": (60, 120), "kidney_medulla": (70, 140), "adrenals": (10, 40),
                "stomach_wall": (10, 30), "bowel_wall": (10, 30), "bladder_content": (0, 300), "muscle": (5, 15)},
}
# Hollow-organ contents, HU set (not added) inside the organ's inner part.
CONTENTS: dict[str, tuple[float, float]] = {"gas": (-1000, -750), "water": (0, 25), "oral_contrast": (150, 450)}
CONTENT_PROBS = {"native": 0.4, "gas": 0.25, "water": 0.2, "oral_contrast": 0.15}
SYNTHSEG_RANGE = (-100.0, 300.0)     # per-structure offset for the SynthSeg-like draws
ARTERIAL_AORTA_HU = (250.0, 600.0)   # CT angiography: the aorta's absolute HU is pulled into this range
NOISE_HU = (0.0, 30.0)
MIN_FOV_MM = 150.0
THICKNESS_MM = (0.6, 5.0)
SHELL_MM = 4.0                       # renal cortex / hollow-organ wall thickness

# An appearance never drawn in training, for the evaluation only: a low-keV-like look with every
# enhancement doubled (beyond the training ranges), denser bone, darker fat and more noise.
UNSEEN_SETTING = {"phase": "portal_venous", "enhancement_scale": 2.0, "bone_scale": 1.4, "fat_shift": -40.0,
                  "noise_hu": 35.0}


@lru_cache(maxsize=4)
def group_ids(names_items: tuple[tuple[int, str], ...]) -> dict[str, tuple[int, ...]]:
    """Group name → structure ids of a label map whose ids are named by ``names_items``."""
    out: dict[str, list[int]] = {g: [] for g in GROUP_PATTERNS}
    for i, name in names_items:
        for g, pats in GROUP_PATTERNS.items():
            if any(name.startswith(p) for p in pats):
                out[g].append(int(i))
                break
    return {g: tuple(v) for g, v in out.items()}


def _split_shells(full: np.ndarray, groups: dict[str, tuple[int, ...]], spacing: float) -> dict[str, np.ndarray]:
    """Boolean masks of the sub-regions phases treat differently: renal cortex/medulla, walls/contents."""
    r = max(1, int(round(SHELL_MM / spacing)))
    struct = ndimage.generate_binary_structure(3, 1)

    def split(ids):
        m = np.isin(full, ids) if ids else np.zeros(full.shape, bool)
        inner = ndimage.binary_erosion(m, struct, iterations=r) if m.any() else m
        return m & ~inner, inner

    out = {}
    out["kidney_cortex"], out["kidney_medulla"] = split(groups["kidneys"])
    out["stomach_wall"], out["stomach_content"] = split(groups["stomach"])
    out["bowel_wall"], out["bowel_content"] = split(groups["bowel"])
    out["bladder_wall"], out["bladder_content"] = split(groups["bladder"])
    return out


def apply_phase(ct: np.ndarray, full: np.ndarray, names: dict[int, str], phase: str, rng: np.random.Generator,
                spacing: float, scale: float = 1.0) -> tuple[np.ndarray, dict]:
    """Simulate a contrast ``phase`` (a key of :data:`PHASES`) on a native CT; returns (CT, draws)."""
    groups = group_ids(tuple(sorted(names.items())))
    shells = _split_shells(full, groups, spacing)
    out = ct.astype(np.float32, copy=True)
    lut = np.zeros(int(max(names, default=0)) + 1, np.float32)
    draws: dict = {"phase": phase}
    for g, (lo, hi) in PHASES[phase].items():
        shift = float(rng.uniform(lo, hi)) * scale
        draws[g] = round(shift, 1)
        if g in shells:
            out[shells[g]] += shift
        else:
            lut[list(groups.get(g, ()))] = shift
    out += lut[np.clip(full, 0, len(lut) - 1)]
    if phase == "arterial" and groups["arteries"]:
        # CT angiography: bring the aorta into its absolute range whatever the native value was.
        aorta = np.isin(full, groups["arteries"])
        if aorta.any():
            target = float(rng.uniform(*ARTERIAL_AORTA_HU)) * (scale if scale > 1 else 1.0)
            out[aorta] += target - float(np.median(out[aorta]))
            draws["aorta_hu"] = round(target, 1)
    for organ in ("stomach", "bowel"):
        kind = str(rng.choice(list(CONTENT_PROBS), p=list(CONTENT_PROBS.values())))
        draws[f"{organ}_content"] = kind
        if kind != "native":
            m = shells[f"{organ}_content"]
            out[m] = rng.uniform(*CONTENTS[kind]) + rng.normal(0, 8, int(m.sum()))
    return out, draws


def apply_synthseg(ct: np.ndarray, full: np.ndarray, rng: np.random.Generator,
                   offsets: tuple[float, float] = SYNTHSEG_RANGE) -> np.ndarray:
    """A random HU offset per labelled structure (unlabelled voxels keep theirs)."""
    n = int(full.max()) + 1
    lut = rng.uniform(*offsets, size=n).astype(np.float32)
    lut[0] = 0.0
    return ct.astype(np.float32) + lut[full]


def apply_unseen(ct: np.ndarray, full: np.ndarray, names: dict[int, str], rng: np.random.Generator,
                 spacing: float) -> np.ndarray:
    """The evaluation-only appearance :data:`UNSEEN_SETTING`."""
    s = UNSEEN_SETTING
    out, _ = apply_phase(ct, full, names, s["phase"], rng, spacing, scale=s["enhancement_scale"])
    bone = np.isin(full, group_ids(tuple(sorted(names.items())))["bone"])
    out[bone] = out[bone] * s["bone_scale"]
    fat = (full == 0) & (ct > -200) & (ct < -40)
    out[fat] += s["fat_shift"]
    return add_noise(out, s["noise_hu"], rng)


def body_mask(ct: np.ndarray) -> np.ndarray:
    return ct > -500


def add_arms_and_table(ct: np.ndarray, spacing: float, rng: np.random.Generator, arms: bool = True,
                       table: bool = True) -> np.ndarray:
    """Arm-like limbs beside the trunk and a table below the back, along the whole z range."""
    out = ct.copy()
    body = body_mask(ct)
    if not body.any():
        return out
    xs, ys = np.nonzero(body.any(2))
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    nx, ny, nz = ct.shape
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    cy = (y0 + y1) / 2 + rng.uniform(-0.15, 0.15) * (y1 - y0)
    if arms:
        for side in (-1, 1):
            r_mm = rng.uniform(40, 60)
            gap = rng.uniform(5, 40) / spacing
            r = r_mm / spacing
            cx = (x0 - gap - r) if side < 0 else (x1 + gap + r)
            d = ((gx - cx) / r) ** 2 + ((gy - cy) / (r * rng.uniform(0.8, 1.1))) ** 2
            limb, bone = d <= 1.0, d <= 0.12
            fat = limb & (d > 0.75)
            sl = np.zeros((nx, ny), np.float32)
            sl[limb] = rng.uniform(30, 60)
            sl[fat] = rng.uniform(-110, -70)
            sl[bone] = rng.uniform(500, 1100)
            m = np.repeat(limb[:, :, None], nz, 2)
            out[m] = np.repeat(sl[:, :, None], nz, 2)[m] + rng.normal(0, 10, int(m.sum()))
    if table:
        gap = rng.uniform(0, 25) / spacing
        thick = max(1, int(round(rng.uniform(6, 20) / spacing)))
        top = int(round(y0 - gap))
        lo = max(0, top - thick)
        if top > 0:
            out[:, lo:top, :] = np.maximum(out[:, lo:top, :], rng.uniform(-400, 150))
    return out


def add_noise(ct: np.ndarray, sigma_hu: float, rng: np.random.Generator, corr_vox: float = 0.7) -> np.ndarray:
    """Spatially correlated Gaussian noise of about ``sigma_hu`` standard deviation."""
    if sigma_hu <= 0:
        return ct
    n = ndimage.gaussian_filter(rng.standard_normal(ct.shape).astype(np.float32), corr_vox)
    n *= sigma_hu / max(float(n.std()), 1e-6)
    return ct + n


def apply_kernel(ct: np.ndarray, amount: float) -> np.ndarray:
    """Reconstruction kernel: amount < 0 blurs (soft), > 0 sharpens (unsharp mask)."""
    if abs(amount) < 1e-3:
        return ct
    blurred = ndimage.gaussian_filter(ct, (0.8, 0.8, 0.0))
    if amount < 0:
        return ct + (-amount) * (blurred - ct)
    return ct + amount * (ct - blurred)


def apply_thickness(ct: np.ndarray, spacing_z: float, thickness_mm: float) -> np.ndarray:
    """Partial volume of slices ``thickness_mm`` thick: triangular averaging along z."""
    half = thickness_mm / spacing_z
    if half <= 1.05:
        return ct
    n = int(np.ceil(half))
    w = np.clip(1 - np.abs(np.arange(-n, n + 1)) / half, 0, None)
    return ndimage.convolve1d(ct, (w / w.sum()).astype(np.float32), axis=2, mode="nearest")


def crop_field_of_view(ct: np.ndarray, spacing: float, rng: np.random.Generator, centre_xy: tuple[float, float],
                       fov_mm: float) -> np.ndarray:
    """A tight in-plane reconstruction around ``centre_xy`` (voxels): outside it the image is
    replaced by its edge, as :func:`pad_edge` presents a small input at inference."""
    half = fov_mm / spacing / 2
    cx, cy = centre_xy
    x0, x1 = int(max(0, round(cx - half))), int(min(ct.shape[0], round(cx + half)))
    y0, y1 = int(max(0, round(cy - half))), int(min(ct.shape[1], round(cy + half)))
    inner = ct[x0:x1, y0:y1]
    return np.pad(inner, ((x0, ct.shape[0] - x1), (y0, ct.shape[1] - y1), (0, 0)), mode="edge")


def crop_slab(ct: np.ndarray, z0: int, z1: int) -> np.ndarray:
    """Only slices z0..z1-1 acquired; the rest edge-replicated."""
    return np.pad(ct[:, :, z0:z1], ((0, 0), (0, 0), (z0, ct.shape[2] - z1)), mode="edge")


def pad_edge(array: np.ndarray, min_shape: tuple[int, int, int], multiple: int = 8) -> tuple[np.ndarray, tuple]:
    """Edge-replicate ``array`` to at least ``min_shape`` and a multiple of ``multiple``; returns the
    padded array and the slices that recover the original."""
    pads, crop = [], []
    for n, m in zip(array.shape, min_shape):
        target = max(n, m)
        target = int(np.ceil(target / multiple) * multiple)
        before = (target - n) // 2
        pads.append((before, target - n - before))
        crop.append(slice(before, before + n))
    return np.pad(array, pads, mode="edge"), tuple(crop)
