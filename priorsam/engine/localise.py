"""Run the 3D organ localiser over a volume and turn its output into per-slice guidance.

volume (canonical RAS HU) → resampled to the localiser's grid (anti-aliased) → edge-padded to
its minimum input (a tight field of view or a thin slab is presented as training presented it)
→ probabilities → per organ (:func:`keep_components`): the connected component with the most probability mass
among those near another organ, and the pieces of the same organ near it; presence, a 3D box grown (never
shifted: where the localiser is off, a shifted box cuts the organ, a grown one only searches more) →
per original slice, the organs to look for and their in-plane boxes; and the kept organs' probabilities, which
:meth:`LocaliserResult.labels_on` interpolates to the volume's grid.

A volume whose z coverage is under ``min_z_mm`` gives no 3D context: :func:`localise` returns a
result with ``usable=False`` and the reason, and the per-slice model runs alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from ..data.appearance import pad_edge
from ..data.framed_volume import labels_from_fine_scores, resample_labels, resample_to_grid, upsample_scores
from ..labels import organ_id, organ_ids, organ_x, sides_contradicted

# Under this much z a volume gives the localiser no 3D context. Partial upper-abdominal scans of 9–90 mm
# were segmented better with it than by the per-slice heads alone (bench/results/partial_z_decision.md).
MIN_Z_MM = 6.0


def z_extent_mm(shape, spacing) -> float:
    """How much z a volume of ``shape`` (X, Y, Z) and voxel ``spacing`` (mm) covers: slices × slice spacing."""
    return shape[2] * float(spacing[2])


@dataclass
class LocaliserResult:
    """What the localiser found, on the input volume's voxel grid (canonical RAS indices)."""

    usable: bool
    reason: str = ""
    too_thin: bool = False                    # unusable because the volume covers under min_z_mm of z
    present: dict[int, bool] = field(default_factory=dict)
    volume_ml: dict[int, float] = field(default_factory=dict)
    boxes: dict[int, tuple[float, float, float, float, float, float]] = field(default_factory=dict)  # x0,y0,z0,x1,y1,z1
    slice_boxes: dict[int, dict[int, tuple[float, float, float, float]]] = field(default_factory=dict)
    # Per organ and slice: the box of the localiser's own mask in the coarse slice that holds the slice's
    # centre, not grown (a box prompt for the binary path; slice_boxes are where to search).
    prompt_boxes: dict[int, dict[int, tuple[float, float, float, float]]] = field(default_factory=dict)
    seconds: float = 0.0
    coarse_labels: np.ndarray | None = None   # (x, y, z) on the localiser grid, after clean-up
    # (C, x, y, z) float16: each kept organ's probability within one voxel of its kept mask; for the
    # background, the highest probability of the classes not kept there (what :meth:`labels_on` interpolates)
    coarse_scores: np.ndarray | None = None
    n_slices: int = 0
    # How surely it reads the organs it draws in the volume as given and flipped left–right (organ_confidence,
    # one unshifted pass each; None where the check did not run), and what it says when the flipped copy reads
    # better by more than the margin (looks_mirrored).
    confidence: float | None = None
    flipped_confidence: float | None = None
    warnings: list[str] = field(default_factory=list)

    def organs_at(self, z: int) -> dict[int, tuple[float, float, float, float]]:
        """organ id → in-plane box (x0, y0, x1, y1) in voxel indices of slice ``z``."""
        return {k: b[z] for k, b in self.slice_boxes.items() if z in b}

    def prompts_at(self, z: int) -> dict[int, tuple[float, float, float, float]]:
        """organ id → the localiser mask's own box (x0, y0, x1, y1) in slice ``z`` (voxel indices)."""
        return {k: b[z] for k, b in self.prompt_boxes.items() if z in b}

    def slices_needed(self, slice_mm: float, missing_margin_mm: float = 50.0) -> np.ndarray:
        """Slices that may hold an organ: those of a located organ's box; when an organ was not found,
        every slice within ``missing_margin_mm`` of the located ones (it lies among them in any adult)."""
        zs = sorted({z for b in self.slice_boxes.values() for z in b})
        if zs and not all(self.present.get(k, False) for k in organ_ids()):
            m = int(np.ceil(missing_margin_mm / max(slice_mm, 1e-3)))
            n = int(max(self.boxes[k][5] for k in self.boxes)) + 1 + m
            zs = range(max(0, zs[0] - m), min(n, self.n_slices) if self.n_slices else n)
        return np.array(list(zs), dtype=int)

    def labels_on(self, shape: tuple[int, int, int], interpolation: str = "linear",
                  scores: np.ndarray | None = None) -> np.ndarray:
        """The localiser's cleaned organ labels on a volume grid of ``shape`` (X, Y, Z). ``"linear"``: the
        kept organs' probabilities interpolated, so a boundary falls where they cross rather than on a
        4 mm voxel's face; ``"nearest"``: each voxel takes the coarse voxel that holds its centre.
        ``scores``: :meth:`scores_on`'s result for the same shape and interpolation, when computed already."""
        _check_interpolation(interpolation)
        if interpolation == "nearest" or self.coarse_scores is None:
            return resample_labels(self.coarse_labels, shape)
        return labels_from_fine_scores(scores if scores is not None else self.scores_on(shape, interpolation), shape)

    def scores_on(self, shape: tuple[int, int, int], interpolation: str = "linear") -> np.ndarray | None:
        """The kept organs' probabilities (C, X', Y', Z') float32 for a volume grid of ``shape``, on a grid a
        volume voxel reads by :func:`~priorsam.data.framed_volume.nearest_index`: interpolated to twice the
        localiser's resolution (``"linear"``) or its own voxels (``"nearest"``); None without scores."""
        _check_interpolation(interpolation)
        if self.coarse_scores is None:
            return None
        if interpolation == "nearest":
            return self.coarse_scores.astype(np.float32)
        return upsample_scores(self.coarse_scores, shape)

    def summary(self) -> dict:
        out = {"usable": self.usable, "reason": self.reason, "seconds": round(self.seconds, 2),
               "present": {str(k): v for k, v in self.present.items()},
               "volume_ml": {str(k): round(v, 1) for k, v in self.volume_ml.items()}}
        if self.flipped_confidence is not None:
            # None for a nan (no organ drawn): the summary goes into JSON reports, where NaN is not valid.
            out["confidence"] = {k: None if np.isnan(v) else round(v, 4)
                                 for k, v in (("as_given", self.confidence), ("flipped", self.flipped_confidence))}
        return out


@torch.inference_mode()
def probabilities(coarse: np.ndarray, localiser, device: str | torch.device = "cpu", shifts: int = 1) -> np.ndarray:
    """(x, y, z) HU on the localiser's grid → (C, x, y, z) float32 class probabilities, edge-padded to its
    minimum input (a tight field of view or a thin slab is presented as training presented it).

    With ``shifts`` > 1 the network also sees the grid moved by i·8/``shifts`` voxels along each axis
    (i = 1 … shifts − 1; edge-padded in front, cropped back after) and the probabilities are averaged: the
    network pools by 8, so each shift shows it the anatomy at another phase of its pooling grid. On the
    training anatomies kept out of the heads' training, 4 shifts lifted the localiser's own masks on
    150 mm crops around the aorta from 0.827 to 0.836 mean Dice on its 4 mm grid (8 of 9 better;
    docs/generalisation.md)."""
    n = max(1, int(shifts))
    total = 0.0
    for o in (i * 8 // n for i in range(n)):
        grid = np.pad(coarse, [(o, 0)] * 3, mode="edge") if o else coarse
        padded, crop = pad_edge(grid, localiser.min_shape)
        x = localiser.prepare(torch.from_numpy(padded)[None].to(device))
        total = total + localiser(x).float().softmax(1)[0][(slice(None),) + crop][:, o:, o:, o:]
    return (total / n).cpu().numpy()


def organ_confidence(probs: np.ndarray) -> float:
    """(C, x, y, z) class probabilities (class 0 background) → the mean top-class probability over the voxels
    whose top class is an organ: how surely the localiser reads the organs it draws (nan where it draws none)."""
    top = probs.max(0)
    organ = probs.argmax(0) > 0
    return float(top[organ].mean()) if organ.any() else float("nan")


def mirror_confidences(coarse: np.ndarray, localiser, device: str | torch.device = "cpu",
                       probs: np.ndarray | None = None) -> tuple[float, float]:
    """(x, y, z) HU on the localiser's grid (canonical RAS: x runs to the patient's right) → the localiser's
    :func:`organ_confidence` as given and flipped left–right, one unshifted pass each; ``probs``: that pass over
    the volume as given, when already run. The network never saw a mirrored abdomen in training, so it should
    read a correctly oriented one more surely than its mirror image; on pseudo-patients it did in every whole
    volume, but by over 0.02 in only 32 of 42 held-out ones (bench/results/localiser_mirror_check.md)."""
    given = probs if probs is not None else probabilities(coarse, localiser, device)
    flipped = probabilities(np.ascontiguousarray(coarse[::-1]), localiser, device)
    return organ_confidence(given), organ_confidence(flipped)


def looks_mirrored(confidence: float, flipped_confidence: float, margin: float,
                   spleen_liver_ml: tuple[float, float] | None = None) -> str:
    """The warning for a volume whose left–right flipped copy the localiser reads more surely by over ``margin``,
    or (``spleen_liver_ml``: its kept spleen and liver in a whole volume) whose "spleen" is larger than its
    "liver" — on a mirrored abdomen it calls the liver "spleen" (bench/results/localiser_mirror_check.md) —, or ""."""
    why = []
    if flipped_confidence - confidence > margin:           # nan (no organ drawn either way) never warns
        why.append(f"the 3D localiser reads it flipped more surely ({flipped_confidence:.3f} against {confidence:.3f})")
    if spleen_liver_ml is not None and spleen_liver_ml[0] > spleen_liver_ml[1]:
        why.append(f"its spleen ({spleen_liver_ml[0]:.0f} mL) is larger than its liver ({spleen_liver_ml[1]:.0f} mL)")
    if not why:
        return ""
    return (f"the image looks mirrored left-right: {' and '.join(why)}, as with a header that swaps the patient's left "
            f"and right or situs inversus; check the orientation, since organs of one side may be labelled as the other's")


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"interpolation must be linear or nearest, not {interpolation!r}")


def coarse_to_fine_index(c0: float, c1: float, n_fine: int, n_coarse: int) -> tuple[float, float]:
    """Coarse voxel range [c0, c1] (inclusive) → fine voxel index range covering the same extent."""
    f = n_fine / n_coarse
    # Coarse voxel c spans fine coordinates [c·f − 0.5, (c+1)·f − 0.5] (fine centres at integers).
    return c0 * f - 0.5, (c1 + 1) * f - 0.5


def _fine_box(coarse_slice: np.ndarray, nf, nc, grow: tuple[float, float] = (0.0, 0.0)):
    """A non-empty (x, y) coarse mask → its in-plane box (x0, y0, x1, y1) in fine voxel indices, grown by
    ``grow`` fine voxels and kept inside the fine slice."""
    xs, ys = np.nonzero(coarse_slice)
    fx0, fx1 = coarse_to_fine_index(xs.min(), xs.max(), nf[0], nc[0])
    fy0, fy1 = coarse_to_fine_index(ys.min(), ys.max(), nf[1], nc[1])
    return (max(0.0, fx0 - grow[0]), max(0.0, fy0 - grow[1]), min(nf[0] - 1.0, fx1 + grow[0]),
            min(nf[1] - 1.0, fy1 + grow[1]))


def keep_components(labels: np.ndarray, probs: np.ndarray, spacing_mm: float, pieces: bool = True,
                    piece_mass: float = 0.25, piece_gap_mm: float = 40.0, context_mm: float = 30.0) -> np.ndarray:
    """(X, Y, Z) argmax labels and (C, X, Y, Z) probabilities on the localiser's grid → labels with, per
    organ, its main component and (``pieces``) the pieces near it; everything else background.

    The main component is the one with the most probability mass, not the most voxels: a large blob of
    barely-winning voxels elsewhere (a "spleen" in the stomach wall) loses to the confident one. It is
    chosen among the components that lie within ``context_mm`` of another organ's main component (its
    box): the eight organs sit against one another in the upper abdomen, and a confident blob far from
    all of them (a "stomach" in the bowel at the pelvic edge of a scan) is not one of them. When no
    component of an organ has that context (an organ alone in a field of view), every one competes;
    ``context_mm`` 0 turns the rule off. With ``pieces``, every other component with at least
    ``piece_mass`` of the main one's mass whose nearest voxel lies within ``piece_gap_mm`` of it is kept
    too: at 4 mm the localiser draws the pancreas in pieces (its thin neck is lost), and keeping only the
    main piece halved it (docs/generalisation.md)."""
    organs = {}
    for k in range(1, probs.shape[0]):
        lab, n = ndimage.label(labels == k)
        if n:
            mass = np.asarray(ndimage.sum_labels(probs[k], lab, np.arange(1, n + 1)))
            boxes = np.array([[s.start for s in b] + [s.stop - 1 for s in b] for b in ndimage.find_objects(lab)])
            organs[k] = (lab, n, mass, boxes)
    top = {k: int(np.argmax(o[2])) for k, o in organs.items()}
    grow = context_mm / spacing_mm
    for _ in range(3 if context_mm > 0 else 0):
        # Each organ's choice depends on the others' main components: a few rounds settle it (a wrong
        # blob of one organ can lend a wrong blob of another context only until it is itself dropped).
        new = {}
        for k, (lab, n, mass, boxes) in organs.items():
            others = np.array([organs[j][3][top[j]] for j in organs if j != k]).reshape(-1, 6)
            near = ((boxes[:, None, :3] <= others[None, :, 3:] + grow) &
                    (boxes[:, None, 3:] >= others[None, :, :3] - grow)).all(2).any(1)   # (n,): boxes overlap
            new[k] = int(np.argmax(np.where(near, mass, -1.0))) if near.any() else int(np.argmax(mass))
        if new == top:
            break
        top = new
    out = np.zeros(labels.shape, np.uint8)
    for k, (lab, n, mass, _) in organs.items():
        keep = np.arange(n) == top[k]
        if pieces and n > 1:
            gap = ndimage.distance_transform_edt(lab != top[k] + 1, sampling=spacing_mm)
            near = np.asarray(ndimage.minimum(gap, lab, np.arange(1, n + 1)))
            keep |= (mass >= piece_mass * mass[top[k]]) & (near <= piece_gap_mm)
        out[np.isin(lab, 1 + np.flatnonzero(keep))] = k
    return out


def contradicted_sides(labels: np.ndarray) -> str:
    """What in a (x, y, z) map of organ ids on a canonical RAS grid (a larger x index lies further to the
    patient's right) contradicts left and right as anatomy has them (:func:`~priorsam.labels.sides_contradicted`),
    or ""."""
    return sides_contradicted(organ_x(labels))


@torch.inference_mode()
def localise(hu: np.ndarray, spacing: np.ndarray, localiser, device: str | torch.device = "cpu",
             margin_mm: float = 10.0, z_margin_mm: float = 6.0, min_z_mm: float = MIN_Z_MM,
             min_ml: float = 1.0, pieces: bool = True, piece_mass: float = 0.25,
             piece_gap_mm: float = 40.0, context_mm: float = 30.0, shifts: int = 1,
             mirror_margin: float | None = None, mirror_volumes: bool = False) -> LocaliserResult:
    """Locate the organs in a (X,Y,Z) HU volume with voxel ``spacing`` (mm); per organ the components of
    :func:`keep_components`; the probabilities averaged over ``shifts`` placements of the grid
    (:func:`probabilities`). ``mirror_margin``: also read the volume flipped left–right and warn when that copy
    reads more surely by over this (:func:`looks_mirrored`); None: not checked. ``mirror_volumes``: also warn when
    its kept spleen is larger than its kept liver (for whole volumes: a partial scan or a tight field cuts the two
    unevenly)."""
    import time

    t0 = time.time()
    z_mm = z_extent_mm(hu.shape, spacing)
    if z_mm < min_z_mm:
        return LocaliserResult(False, f"3D context too thin ({z_mm:.0f} mm of z < {min_z_mm:.0f} mm): "
                                      f"the per-slice model runs without the localiser", too_thin=True)
    coarse = resample_to_grid(hu, spacing, localiser.spacing_mm)
    probs = probabilities(coarse, localiser, device, shifts)
    labels = keep_components(probs.argmax(0), probs, localiser.spacing_mm, pieces, piece_mass, piece_gap_mm,
                             context_mm)
    wrong = contradicted_sides(labels)
    if wrong:
        # Seen on a real non-contrast patient's three 1 mm slices: the localiser called the lateral liver
        # "spleen" (bench/results/localiser_one_slice_decision.md). Boxes from such an answer would prompt
        # the wrong organ everywhere, so the per-slice model answers without them.
        return LocaliserResult(False, f"the 3D localiser's organs contradict anatomy ({wrong}), so it cannot "
                                      f"read this image; the per-slice model runs without it",
                               n_slices=int(hu.shape[2]))
    voxel_ml = localiser.spacing_mm ** 3 / 1000.0
    res = LocaliserResult(True, seconds=0.0, n_slices=int(hu.shape[2]))
    clean = np.zeros_like(labels)
    nf = np.array(hu.shape)
    nc = np.array(labels.shape)
    for k in range(1, localiser.num_classes):
        m = labels == k
        ml = float(m.sum()) * voxel_ml
        res.volume_ml[k] = ml
        res.present[k] = bool(m.any()) and ml >= min_ml
        if not res.present[k]:
            continue
        clean[m] = k
        idx = np.argwhere(m)
        lo, hi = idx.min(0), idx.max(0)
        box = []
        for a in range(3):
            f0, f1 = coarse_to_fine_index(lo[a], hi[a], nf[a], nc[a])
            grow = (margin_mm if a < 2 else z_margin_mm) / float(spacing[a])
            box.append((max(0.0, f0 - grow), min(nf[a] - 1.0, f1 + grow)))
        res.boxes[k] = (box[0][0], box[1][0], box[2][0], box[0][1], box[1][1], box[2][1])
        # Per fine slice: the union of the in-plane boxes of the coarse slices it overlaps (±1).
        per, tight = {}, {}
        zc_of = (np.arange(nf[2]) + 0.5) * nc[2] / nf[2] - 0.5
        g = margin_mm / float(spacing[0]), margin_mm / float(spacing[1])
        for z in range(int(np.floor(box[2][0])), int(np.ceil(box[2][1])) + 1):
            zc = zc_of[z]
            cz = [c for c in (int(np.floor(zc)) - 1, int(np.floor(zc)), int(np.ceil(zc)), int(np.ceil(zc)) + 1)
                  if 0 <= c < nc[2]]
            sl = m[:, :, cz].any(2)
            if not sl.any():
                continue
            per[z] = _fine_box(sl, nf, nc, g)
            own = m[:, :, int(np.clip(np.rint(zc), 0, nc[2] - 1))]
            if own.any():
                tight[z] = _fine_box(own, nf, nc)
        res.slice_boxes[k] = per
        res.prompt_boxes[k] = tight
    res.coarse_labels = clean
    if mirror_margin is not None:
        res.confidence, res.flipped_confidence = mirror_confidences(coarse, localiser, device,
                                                                    probs if shifts <= 1 else None)
        spleen, liver = organ_id("spleen"), organ_id("liver")
        sizes = ((res.volume_ml[spleen], res.volume_ml[liver])
                 if mirror_volumes and res.present.get(spleen) and res.present.get(liver) else None)
        res.warnings += [w for w in [looks_mirrored(res.confidence, res.flipped_confidence, mirror_margin, sizes)] if w]
    # Scores to interpolate: a kept organ's probability within one voxel of its kept mask; the
    # background's, the highest probability of every class not kept there (so a dropped component stays
    # background, and at each coarse voxel's centre the highest score is its cleaned label).
    scores = np.zeros_like(probs)
    scores[0] = probs[0]
    for k in range(1, probs.shape[0]):
        near = ndimage.binary_dilation(clean == k)   # empty for an organ not kept
        scores[k][near] = probs[k][near]
        np.maximum(scores[0], np.where(near, 0.0, probs[k]), out=scores[0])
    res.coarse_scores = scores.astype(np.float16)
    res.seconds = time.time() - t0
    return res
