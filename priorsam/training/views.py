"""Augmented views of a labelled case, framed for the model (one implementation for all views).

A view is one random draw of the volume-level augmentations (contrast phase, slice
thickness, window jitter) plus per-slice geometry/intensity augmentation; view 0 is the
clean, unaugmented framing. Everything is seeded, so a view spec reproduces its pixels and
can key the feature cache.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np
import torch

from ..data.augment import (TOTALSEG_GROUPS, RandContrastPhased, RandSliceThicknessd, RandWindowJitter,
                            slice_augmentation)
from ..data.framed_volume import FramedVolume, Framing
from ..io import read_label_map, read_volume, to_display
from ..labels import mapping, remap


@dataclass(frozen=True)
class Case:
    """A labelled CT: image, labels (in ``label_map`` ids, remapped to ours) and optional raw group labels."""

    case_id: str
    image: str
    label: str
    label_map: str | None = None       # name of a mapping in labels.json, e.g. "totalsegmentator"
    group_label: str | None = None     # label map whose ids TOTALSEG_GROUPS refers to (for contrast shifts)


@dataclass(frozen=True)
class ViewSpec:
    view: int
    seed: int
    spacing_mm: float = 1.5
    context: int = 0                   # 0: 2D (slice ×3), 1: 2.5D (z−1, z, z+1)
    augment: bool = True
    organ_fraction: float = 1.0        # share of slices with organs to take
    empty_fraction: float = 0.25       # share of organ-free slices to take
    extra: dict = field(default_factory=dict)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class FramedSlice:
    z: int
    image: torch.Tensor      # (3, 256, 256) in [0, 1]
    label: torch.Tensor      # (256, 256) uint8, our label ids
    meta: dict


def load_case(case: Case):
    # Training sets may be stored windowed (TransUNet's Synapse release is clipped to [−125, 275] HU,
    # so it has no air): the not-CT refusal is for users' inputs, here it only warns.
    vol = read_volume(case.image, force=True)
    lab = read_label_map(case.label).array.astype(np.int64)
    if case.label_map:
        lab = remap(lab, mapping(case.label_map))
    groups = read_label_map(case.group_label).array.astype(np.int64) if case.group_label else None
    return vol, lab, groups


def view_framing(spec: "ViewSpec") -> Framing:
    """The framing of a view: the spec's spacing and context, fixed framing unless ``extra`` says otherwise."""
    return Framing(framing=spec.extra.get("framing", "fixed"), spacing_mm=spec.spacing_mm, context=spec.context)


def content_hash(case: Case) -> str:
    from ..assets import sha256_file

    h = hashlib.sha256()
    for p in (case.image, case.label, case.group_label):
        if p:
            h.update(sha256_file(p).encode())
    return h.hexdigest()[:16]


def iter_view(case: Case, spec: ViewSpec, loaded=None) -> Iterator[FramedSlice]:
    """Yield the framed (and, unless view 0 / augment=False, augmented) slices of one view."""
    vol, lab, groups = loaded or load_case(case)
    rng = np.random.RandomState(spec.seed)
    lab_d = to_display(lab).astype(np.uint8)
    # The frame (and trunk centre) comes from the unaugmented scan. ``extra["framing"]`` switches to
    # LiteMedSAM's upstream framing for the scale-normalisation ablation.
    framed = FramedVolume.from_volume(vol, view_framing(spec))
    hu = framed.slices
    level, width = framed.framing.level, framed.framing.width
    meta = {"framing": framed.framing.framing, "phase": "non_contrast", "thickness_mm": float(vol.spacing[2]),
            "level": level, "width": width}
    if spec.augment:
        grp = to_display(groups) if groups is not None else None
        if grp is not None:
            t = RandContrastPhased(keys=["image"], label_key="groups", groups=TOTALSEG_GROUPS,
                                   phase_probs={"non_contrast": 0.3, "arterial": 0.3, "portal_venous": 0.4})
        else:  # only our 8 labels: shift the organs we know
            ours = {"spleen": [1], "kidneys": [2, 3], "liver": [5], "stomach_wall": [6], "pancreas": [8],
                    "aorta_arteries": [7]}
            t = RandContrastPhased(keys=["image"], label_key="groups", groups=ours,
                                   phase_probs={"non_contrast": 0.3, "arterial": 0.3, "portal_venous": 0.4})
            grp = lab_d
        t.set_random_state(seed=int(rng.randint(2**31)))
        out = t({"image": hu, "groups": grp})
        hu, meta["phase"] = out["image"], out["contrast_phase"]
        th = RandSliceThicknessd(keys=["image"], spacing_mm=float(vol.spacing[2]), prob=0.7)
        th.set_random_state(seed=int(rng.randint(2**31)))
        out = th({"image": hu})
        hu, meta["thickness_mm"] = out["image"], out["slice_thickness_mm"]
        wj = RandWindowJitter()
        wj.set_random_state(seed=int(rng.randint(2**31)))
        level, width = wj.sample()
        meta.update(level=level, width=width)
    has_organ = lab_d.reshape(len(lab_d), -1).any(1)
    organ_z, empty_z = np.flatnonzero(has_organ), np.flatnonzero(~has_organ)
    pick = lambda zs, f: zs if f >= 1 else np.sort(rng.choice(zs, int(round(len(zs) * f)), replace=False))
    zs = np.sort(np.r_[pick(organ_z, spec.organ_fraction), pick(empty_z, spec.empty_fraction)]).astype(int)
    framed = framed.with_slices(hu)
    aug = slice_augmentation(int(rng.randint(2**31))) if spec.augment else None
    for z in zs:
        img = framed.images([z], level, width)[0]
        lbl = framed.labels_to_model(lab_d[z:z + 1].astype(np.int64))[0]
        if aug is not None:
            o = aug({"image": img, "label": lbl[None].float()})
            # MONAI returns MetaTensors; the cache stores plain tensors (loadable with weights_only=True).
            img = o["image"].as_tensor() if hasattr(o["image"], "as_tensor") else o["image"]
            lbl = o["label"].as_tensor() if hasattr(o["label"], "as_tensor") else o["label"]
            img, lbl = img.float().clamp(0, 1), lbl[0].round()
        yield FramedSlice(int(z), img.contiguous(), lbl.to(torch.uint8), dict(meta))
