"""Train the 3D organ localiser on pseudo-patients (and the sample CT itself).

Each step draws, per batch item: a training case; one of its reliable organs, uniformly or by
``organ_weights`` (class balance: in a first try without it the small organs were never learned);
a crop centred on a random voxel of that organ; an appearance (physiological phase, SynthSeg-style
offsets or native); arms and a table; a tight field of view (around the crop's organ, or the aorta
or a kidney) or a thin slab; slice thickness, noise and kernel. Voxels whose pixels do not support
their label (outside a simulated field of view or slab, organs whose registration QA failed) are
ignored by the loss.

Loss: cross-entropy + Dice over the 8 organs (MONAI ``MaskedDiceLoss``), AdamW, cosine decay;
resumable (``last.pt``), CSV log, the localiser weights exported as ``localiser.pt`` (CPU tensors). The
network runs on ``device`` (by default a CUDA GPU when one is usable); the crops are drawn on the CPU.
:func:`train_stages` runs stages that continue each other (the shipped localiser has three), for the command
line and the bundle's ``train_localiser.json`` alike.
"""
from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..config_files import check_setting_names, read_settings
from ..data import appearance as app
from ..data.framed_volume import resample_labels, resample_to_grid
from ..data.pseudo_patients import image_support
from ..errors import InputError, one_line_errors
from ..io import make_folder
from ..labels import labels, organ_ids
from ..models.localiser import OrganLocaliser
from .run_log import open_run_log

IGNORE = 255


@dataclass
class LocaliserTrainConfig:
    bank: str                                   # pseudo-patient cache (priorsam.data.pseudo_patients)
    out_dir: str
    train_cases: list[str] | None = None        # None: every kept case not in holdout
    holdout: list[str] = field(default_factory=list)
    include_sample: bool = True                 # the sample CT itself as one more case
    spacing_mm: float = 4.0
    crop: tuple[int, int, int] = (48, 48, 48)
    init_filters: int = 16
    steps: int = 2500
    batch_size: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-5
    seed: int = 0
    p_phase: float = 0.45                       # physiological phase (arterial/portal-venous/delayed)
    p_synthseg: float = 0.35                    # random offset per structure; the rest stays native
    phase_probs: dict = field(default_factory=lambda: {"arterial": 0.4, "portal_venous": 0.35, "delayed": 0.25})
    p_arms: float = 0.4
    p_table: float = 0.4
    p_fov: float = 0.25                         # tight in-plane field of view, 150–300 mm
    p_fov_on_vessel: float = 0.0                # share of those centred on the aorta or a kidney (as CT
                                                # angiography and renal reconstructions are: organs then sit at
                                                # the field's edge) instead of on the crop's organ
    organ_weights: dict | None = None           # relative chance of each organ (by name, default 1) as a crop's
                                                # centre; None: uniform over the case's reliable organs
    p_spatial: float = 0.0                      # share of crops rotated and scaled about their centre: more
                                                # anatomies than the bank's (organ positions, body size, tilt)
    spatial_scale: tuple[float, float] = (0.85, 1.15)   # isotropic; > 1 shows more of the body (a smaller patient)
    spatial_axis_scale: float = 0.05            # each axis's own factor around it (± this share)
    spatial_rotate_deg: tuple[float, float, float] = (5.0, 5.0, 15.0)  # at most this about x, y, z (z: in-plane)
    p_slab: float = 0.2                         # thin z slab, 40–120 mm
    p_thick: float = 0.3
    p_noise: float = 0.5
    p_kernel: float = 0.4
    log_every: int = 25
    ckpt_every: int = 250
    threads: int = 0
    refresh_every: int = 0                      # look for newly built bank cases every N steps (bank still building)
    init_from: str | None = None                # start from an exported localiser.pt (same grid and width)
    device: str = "auto"                        # auto (a CUDA GPU when usable, else the CPU), cpu, cuda or cuda:N


@dataclass
class TrainCase:
    case_id: str
    ct: np.ndarray          # (X,Y,Z) float32 HU at the localiser grid
    full: np.ndarray        # uint8 sample structure ids
    ours: np.ndarray        # uint8 our ids
    valid_z: tuple[int, int]
    unreliable: list[int]
    organs: list[int]


def to_grid(ct, full, ours, fov, spacing, target_mm) -> tuple:
    ct_c = resample_to_grid(ct, spacing, target_mm)
    shape = ct_c.shape
    full_c = resample_labels(full.astype(np.uint8), shape)
    ours_c = resample_labels(ours.astype(np.uint8), shape)
    fov_c = resample_labels(fov.astype(np.uint8), shape) if fov is not None else np.ones(shape, np.uint8)
    # Slices the sample's field of view covers (nearly) whole; beyond them the crop is edge-padded
    # like a partial scan, and voxels outside the field of view are ignored by the loss.
    support = image_support(fov_c)
    zs = np.flatnonzero(support.any((0, 1)))
    ours_c[fov_c == 0] = IGNORE
    return ct_c, full_c, ours_c, (int(zs.min()), int(zs.max()) + 1)


def load_cases(cfg: LocaliserTrainConfig, case_ids: list[str], log=print) -> list[TrainCase]:
    from ..data.pseudo_patients import list_bank, load, load_sample

    recs = {r["case_id"]: r for r in list_bank(cfg.bank)}
    out = []
    for cid in case_ids:
        if cid == "sample":
            ct, full, ours, _ = load_sample()
            c, f, o, vz = to_grid(ct.array, full, ours, None, ct.spacing, cfg.spacing_mm)
            unrel = []
        else:
            pp = load(recs[cid]["folder"])
            c, f, o, vz = to_grid(pp.ct.astype(np.float32), pp.full, pp.ours, pp.fov, pp.spacing, cfg.spacing_mm)
            unrel = pp.unreliable
        organs = [k for k in organ_ids() if k not in unrel and (o == k).sum() >= 8]
        out.append(TrainCase(cid, c, f, o, vz, unrel, organs))
        log(f"[localiser] loaded {cid}: {c.shape}, valid z {vz}, organs {organs}")
    return out


def select_cases(cfg: LocaliserTrainConfig) -> list[str]:
    from ..data.pseudo_patients import list_bank

    ids = cfg.train_cases or [r["case_id"] for r in list_bank(cfg.bank)]
    if not ids:
        # Else the run would quietly learn the sample CT's one anatomy.
        raise InputError(f"the anatomy bank {cfg.bank} holds no pseudo-patients: build it with `python -m "
                         "priorsam.data.pseudo_patients --cache BANK` or name train_cases")
    ids = [i for i in ids if i not in set(cfg.holdout)]
    if cfg.include_sample and "sample" not in ids:
        ids.append("sample")
    return ids


def _crop(a: np.ndarray, lo: np.ndarray, size, fill) -> np.ndarray:
    """Crop ``size`` at ``lo`` (may run outside the array: padded with ``fill`` or the edge)."""
    pads, sl = [], []
    for d in range(3):
        a0, a1 = lo[d], lo[d] + size[d]
        pads.append((max(0, -a0), max(0, a1 - a.shape[d])))
        sl.append(slice(max(0, a0), min(a.shape[d], a1)))
    c = a[tuple(sl)]
    if any(p != (0, 0) for p in pads):
        c = np.pad(c, pads, mode="edge") if fill == "edge" else np.pad(c, pads, constant_values=fill)
    return c


def organ_chances(organs: list[int], weights: dict | None) -> np.ndarray | None:
    """Probabilities of each of ``organs`` as a crop's centre (None: uniform)."""
    if not weights:
        return None
    name = {lab.id: lab.name for lab in labels()}
    unknown = set(weights) - set(name.values())
    if unknown:
        raise ValueError(f"organ_weights names unknown organs: {sorted(unknown)}")
    w = np.array([float(weights.get(name[k], 1.0)) for k in organs])
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError(f"organ_weights must be finite and ≥ 0: {weights}")
    # A case holding only organs weighted 0 still gets drawn, uniformly, rather than failing mid-run.
    return w / w.sum() if w.sum() > 0 else None


def vessel_centre(middle: np.ndarray, lo: np.ndarray, size: np.ndarray, rng: np.random.Generator,
                  fallback: np.ndarray) -> np.ndarray:
    """Crop coordinates of the aorta's or a kidney's centre (in-plane) for a tight field of view, found in
    ``middle``, our labels in the crop's middle slice on a grid where the crop starts at ``lo``;
    ``fallback`` where none of them is in that slice or its centre lies outside the crop."""
    ids = {lab.name: lab.id for lab in labels()}
    choices = [n for n in ("aorta", "kidney_right", "kidney_left") if (middle == ids[n]).any()]
    if not choices:
        return fallback
    pts = np.argwhere(middle == ids[str(rng.choice(choices))])
    c = fallback.copy()
    c[:2] = np.round(pts.mean(0)).astype(int) - lo[:2] + rng.integers(-2, 3, size=2)
    if np.any(c[:2] < 0) or np.any(c[:2] >= size[:2]):
        return fallback
    return c


def check_spatial(cfg: LocaliserTrainConfig) -> None:
    """Refuse rotation and scaling settings that would mirror, collapse or tumble the crops."""
    lo, hi = cfg.spatial_scale
    if not (0 < lo <= hi) or not (0 <= cfg.spatial_axis_scale < 1) or not 0 <= cfg.p_spatial <= 1:
        raise ValueError(f"p_spatial must lie in [0, 1], spatial_scale be 0 < low ≤ high and spatial_axis_scale "
                         f"in [0, 1): {cfg.p_spatial}, {cfg.spatial_scale}, {cfg.spatial_axis_scale}")
    if len(cfg.spatial_rotate_deg) != 3 or not all(0 <= d <= 45 for d in cfg.spatial_rotate_deg):
        raise ValueError(f"spatial_rotate_deg must be three angles of 0–45°: {cfg.spatial_rotate_deg}")


def spatial_source_size(size: np.ndarray, cfg: LocaliserTrainConfig) -> np.ndarray:
    """The cube a crop of ``size`` is resampled from under the widest rotation and scaling the config draws
    (each output axis then reaches at most this far along every input axis), rounded up to even."""
    reach = max(cfg.spatial_scale) * (1 + cfg.spatial_axis_scale)
    tilt = np.radians(max(cfg.spatial_rotate_deg))
    need = np.ceil(size.max() * reach * (np.cos(tilt) + np.sin(tilt)) + 2)
    return np.full(3, int(need + need % 2))


def rotate_and_scale(ct: np.ndarray, full: np.ndarray, lab: np.ndarray, size: np.ndarray,
                     cfg: LocaliserTrainConfig, rng: np.random.Generator) -> tuple:
    """Rotate and scale a crop about its centre (MONAI ``Affine``) and cut ``size`` from the middle: the
    image linearly (edges continued), the two label maps by nearest voxel. Never mirrored, so left stays
    left. Labels outside the source crop become IGNORE."""
    from monai.transforms import Affine

    rot = [float(np.radians(rng.uniform(-d, d))) for d in cfg.spatial_rotate_deg]
    iso = float(rng.uniform(*cfg.spatial_scale))
    scale = [iso * float(rng.uniform(1 - cfg.spatial_axis_scale, 1 + cfg.spatial_axis_scale)) for _ in range(3)]
    warp = Affine(rotate_params=rot, scale_params=scale, spatial_size=tuple(int(v) for v in size),
                  image_only=True)

    def run(a: np.ndarray, mode: str, padding: str) -> np.ndarray:
        return np.asarray(warp(torch.from_numpy(np.ascontiguousarray(a, np.float32))[None], mode=mode,
                               padding_mode=padding))[0]

    ct = run(ct, "bilinear", "border")
    full = np.rint(run(full, "nearest", "zeros")).astype(np.uint8)
    # Shifted by one so the zero padding is told from background.
    lab1 = np.rint(run(lab.astype(np.float32) + 1, "nearest", "zeros")).astype(np.int32)
    lab = np.where(lab1 == 0, IGNORE, lab1 - 1).astype(np.uint8)
    return ct, full, lab, {"rotate_deg": [round(float(np.degrees(r)), 1) for r in rot],
                           "scale": [round(v, 3) for v in scale]}


def draw_sample(case: TrainCase, cfg: LocaliserTrainConfig, rng: np.random.Generator, names: dict[int, str]):
    """One augmented (image HU crop, label crop) pair; labels use IGNORE where pixels do not support them."""
    size = np.array(cfg.crop)
    k = int(rng.choice(case.organs, p=organ_chances(case.organs, cfg.organ_weights)))
    pts = np.argwhere(case.ours == k)
    centre = pts[rng.integers(len(pts))] + rng.integers(-8, 9, size=3)
    lo = centre - size // 2
    # Drawn only when asked, so older configs see the same random sequence (their weights reproduce).
    spatial = bool(cfg.p_spatial) and rng.random() < cfg.p_spatial
    # A rotated, scaled crop samples a wider region: cut that from the case so its corners are real pixels.
    grab = spatial_source_size(size, cfg) if spatial else size
    glo = centre - grab // 2
    ct = _crop(case.ct, glo, grab, "edge")
    full = _crop(case.full, glo, grab, 0)
    lab = _crop(case.ours, glo, grab, IGNORE).astype(np.uint8)
    # Outside the volume and outside the sample's field of view the pixels are made up: ignore them.
    zs = np.arange(glo[2], glo[2] + grab[2])
    lab[:, :, (zs < case.valid_z[0]) | (zs >= case.valid_z[1])] = IGNORE
    for u in case.unreliable:
        lab[lab == u] = IGNORE
    info = {"case": case.case_id, "organ": k}
    if spatial:
        ct, full, lab, info["spatial"] = rotate_and_scale(ct, full, lab, size, cfg, rng)
    r = rng.random()
    if r < cfg.p_phase:
        ph = str(rng.choice(list(cfg.phase_probs), p=np.array(list(cfg.phase_probs.values())) /
                            sum(cfg.phase_probs.values())))
        ct, _ = app.apply_phase(ct, full, names, ph, rng, cfg.spacing_mm)
        info["appearance"] = ph
    elif r < cfg.p_phase + cfg.p_synthseg:
        ct = app.apply_synthseg(ct, full, rng)
        info["appearance"] = "synthseg"
    else:
        info["appearance"] = "native"
    arms, table = rng.random() < cfg.p_arms, rng.random() < cfg.p_table
    if arms or table:
        ct = app.add_arms_and_table(ct, cfg.spacing_mm, rng, arms=arms, table=table)
    if rng.random() < cfg.p_fov:
        fov = float(rng.uniform(app.MIN_FOV_MM, 300.0))
        c = centre - lo + rng.integers(-4, 5, size=3)
        # Drawn only when asked, so older configs see the same random sequence (their weights reproduce).
        if cfg.p_fov_on_vessel and rng.random() < cfg.p_fov_on_vessel:
            if spatial:
                c = vessel_centre(lab[:, :, size[2] // 2], np.zeros(3, int), size, rng, c)
            else:
                z = int(np.clip(lo[2] + size[2] // 2, 0, case.ours.shape[2] - 1))
                c = vessel_centre(case.ours[:, :, z], lo, size, rng, c)
        ct = app.crop_field_of_view(ct, cfg.spacing_mm, rng, (c[0], c[1]), fov)
        half = fov / cfg.spacing_mm / 2
        gx = np.abs(np.arange(size[0]) - c[0]) > half
        gy = np.abs(np.arange(size[1]) - c[1]) > half
        lab[gx] = IGNORE
        lab[:, gy] = IGNORE
        info["fov_mm"] = round(fov)
    if rng.random() < cfg.p_slab:
        # At most the crop's depth (only tiny test crops are shallower than 30 voxels; the draw is unchanged).
        n = min(int(rng.integers(10, 31)), int(size[2]))
        z0 = int(np.clip(centre[2] - lo[2] - rng.integers(0, n), 0, size[2] - n))
        ct = app.crop_slab(ct, z0, z0 + n)
        lab[:, :, :z0] = IGNORE
        lab[:, :, z0 + n:] = IGNORE
        info["slab"] = n
    if rng.random() < cfg.p_thick:
        ct = app.apply_thickness(ct, cfg.spacing_mm, float(rng.uniform(*app.THICKNESS_MM)))
    if rng.random() < cfg.p_kernel:
        ct = app.apply_kernel(ct, float(rng.uniform(-1.0, 1.5)))
    if rng.random() < cfg.p_noise:
        ct = app.add_noise(ct, float(rng.uniform(*app.NOISE_HU)), rng)
    return ct.astype(np.float32), lab, info


def localiser_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """CE (ignoring IGNORE) + masked soft Dice over the organs."""
    from monai.losses import MaskedDiceLoss

    valid = labels != IGNORE
    # A crop that is all IGNORE (outside a tight field of view) has no CE term: PyTorch's mean over zero
    # voxels is NaN (with a zero gradient), which would only poison the logged loss.
    ce = F.cross_entropy(logits, labels.long(), ignore_index=IGNORE) if bool(valid.any()) else logits.sum() * 0.0
    target = torch.where(valid, labels, torch.zeros_like(labels)).long()[:, None]
    dice = MaskedDiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)(
        logits, target, mask=valid[:, None].float())
    return ce + dice, {"ce": float(ce.detach()), "dice": float(dice.detach())}


def train_localiser(cfg: LocaliserTrainConfig, log=print) -> Path:
    from ..data.samples import totalsegmentator_class_names
    from ..engine.device import describe_device, resolve_device

    device = resolve_device(cfg.device)   # before the cases load: a GPU asked for and missing fails at once
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    names = totalsegmentator_class_names()
    organ_chances(organ_ids(), cfg.organ_weights)   # a misspelt organ fails now, not after the cases load
    check_spatial(cfg)
    ids = select_cases(cfg)
    out = make_folder(cfg.out_dir)   # once the bank is known to hold cases: a wrong --bank leaves nothing behind
    cases = load_cases(cfg, ids, log)
    model = OrganLocaliser(num_classes=len(organ_ids()) + 1, spacing_mm=cfg.spacing_mm,
                           init_filters=cfg.init_filters).to(device)
    log(f"[localiser] on {describe_device(device)}")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * min(s, cfg.steps) / cfg.steps)))
    step, prior_steps = 0, 0
    state = out / "last.pt"
    if cfg.init_from and not state.is_file():
        from ..errors import AssetError
        from ..models.spec import read_localiser_checkpoint

        sd, ls = read_localiser_checkpoint(cfg.init_from)
        if (ls.spacing_mm, ls.init_filters) != (cfg.spacing_mm, cfg.init_filters):
            raise AssetError(f"{cfg.init_from} is a {ls.spacing_mm} mm, width-{ls.init_filters} localiser; this run "
                             f"trains {cfg.spacing_mm} mm, width {cfg.init_filters}")
        model.load_state_dict(sd)
        prior_steps = int(ls.steps)
        log(f"[localiser] initialised from {cfg.init_from} ({prior_steps} steps)")
    if state.is_file():
        st = torch.load(state, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optim"])
        sched.load_state_dict(st["sched"])
        step = st["step"]
        prior_steps = int(st.get("prior_steps", 0))
        log(f"[localiser] resumed at step {step}")
    (out / "config.json").write_text(json.dumps({**asdict(cfg), "cases": ids}, indent=1))
    rng = np.random.default_rng(cfg.seed + step)
    fh, w = open_run_log(out / "log.csv", ["step", "lr", "loss", "ce", "dice", "sec_per_step"], step)
    model.train()
    t_last, acc = time.time(), []
    try:
        while step < cfg.steps:
            if cfg.refresh_every and step % cfg.refresh_every == 0:
                have = {c.case_id for c in cases}
                new = [i for i in select_cases(cfg) if i not in have]
                if new:
                    cases += load_cases(cfg, new, log)
                    ids = [c.case_id for c in cases]
                    (out / "config.json").write_text(json.dumps({**asdict(cfg), "cases": ids}, indent=1))
                # While the bank is still registering (it writes bank.json when done) leave it a core.
                torch.set_num_threads(cfg.threads or (os.cpu_count() or 1) if (Path(cfg.bank) / "bank.json").is_file()
                                      else 1)
            batch = [draw_sample(cases[int(rng.integers(len(cases)))], cfg, rng, names) for _ in range(cfg.batch_size)]
            hu = torch.from_numpy(np.stack([b[0] for b in batch])).to(device)
            lab = torch.from_numpy(np.stack([b[1] for b in batch])).to(device)
            logits = model(model.prepare(hu))
            loss, parts = localiser_loss(logits, lab)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step += 1
            acc.append((float(loss.detach()), parts["ce"], parts["dice"]))
            if step % cfg.log_every == 0 or step == cfg.steps:
                m = np.mean(acc, 0)
                acc = []
                dt = (time.time() - t_last) / cfg.log_every
                t_last = time.time()
                w.writerow([step, f"{sched.get_last_lr()[0]:.2e}", f"{m[0]:.4f}", f"{m[1]:.4f}", f"{m[2]:.4f}", f"{dt:.2f}"])
                fh.flush()
                log(f"[localiser] step {step}/{cfg.steps} loss {m[0]:.4f} (ce {m[1]:.3f}, dice {m[2]:.3f}) {dt:.2f} s/step")
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                tmp = state.with_suffix(".part")
                torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict(),
                            "step": step, "prior_steps": prior_steps}, tmp)
                os.replace(tmp, state)
                export_localiser(model, cfg, ids, out / "localiser.pt", prior_steps)
    finally:
        fh.close()
    return export_localiser(model, cfg, ids, out / "localiser.pt", prior_steps)


def export_localiser(model: OrganLocaliser, cfg: LocaliserTrainConfig, cases: list[str], path: Path,
                     prior_steps: int = 0) -> Path:
    """Tensors-only localiser weights with its spec (see :mod:`priorsam.models.spec`); ``steps`` counts the
    steps of the runs it continued (``init_from``) too."""
    from ..models.spec import LocaliserSpec, encode_json

    spec = LocaliserSpec(spacing_mm=cfg.spacing_mm, init_filters=cfg.init_filters, num_classes=model.num_classes,
                         windows=model.windows, min_shape=list(model.min_shape), trained_on=cases,
                         holdout=list(cfg.holdout), steps=prior_steps + cfg.steps)
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    sd["meta.localiser_spec"] = encode_json(asdict(spec))
    tmp = path.with_suffix(".part")
    torch.save(sd, tmp)
    os.replace(tmp, path)
    return path


def plot_curve(log_csv: str | os.PathLike | list, png: str | os.PathLike) -> Path:
    """The training curve (loss, CE, Dice loss per logged step) as a PNG. ``log_csv``: one run's log, or
    the logs of runs that continued each other (``init_from``), drawn one after the other with a line
    where each later stage starts (its crops differ, so its loss is on another scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..preview import save_figure

    logs = [log_csv] if isinstance(log_csv, (str, os.PathLike)) else list(log_csv)
    rows, starts, offset = [], [], 0
    for path in logs:
        with open(path, newline="") as f:
            part = list(csv.DictReader(f))
        if rows:
            starts.append(offset)
        rows += [{**r, "step": int(r["step"]) + offset} for r in part]
        offset = rows[-1]["step"]
    step = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for key, label in (("loss", "total"), ("ce", "cross-entropy"), ("dice", "Dice loss (8 organs)")):
        ax.plot(step, [float(r[key]) for r in rows], label=label, lw=1)
    for x in starts:
        ax.axvline(x, color="0.4", ls="--", lw=0.8)
    ax.set_xlabel("step" + (" (dashed: the next stage starts from the previous weights)" if starts else ""))
    ax.set_ylabel("training loss (mean of logged steps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, png, dpi=100)


def stage_settings(config: str | os.PathLike | Mapping | None) -> dict:
    """One stage's :class:`LocaliserTrainConfig` fields from a JSON file (or a dict of them), unknown names
    refused; the run's ``bank`` and ``out_dir`` are not among them."""
    if config is None:
        kw = {}
    elif isinstance(config, Mapping):
        kw = dict(config)
        check_setting_names(kw, LocaliserTrainConfig, "localiser config", fixed=("bank", "out_dir"))
    else:
        kw = read_settings(config, LocaliserTrainConfig, "localiser config", fixed=("bank", "out_dir"))
    if "crop" in kw:
        kw["crop"] = tuple(kw["crop"])
    return kw


def train_stages(bank: str, configs: Sequence, out_dir: str, steps: int | None = None, log=print,
                 device: str | None = None) -> Path:
    """Train the localiser in stages, each continuing the weights of the one before (the shipped recipe:
    bundle/docs/training/README.md steps 4 and 10); returns the last stage's ``localiser.pt``.

    ``configs``: one JSON file (or dict) of :class:`LocaliserTrainConfig` fields per stage. With one stage the
    run is ``out_dir`` itself; with more, stage k runs in ``out_dir/stage_k`` and its ``init_from`` is stage
    k−1's export (a stage file's own ``init_from`` counts only for the first stage). Resumable: a finished
    stage is not run again, an interrupted one goes on from its ``last.pt``. ``steps``: every stage's
    steps (a quick try), else each config's own; ``device``: every stage's device, else each config's own
    (``auto`` where it names none)."""
    if not configs:
        raise InputError("no localiser stage config given")
    previous: Path | None = None
    for k, config in enumerate(configs, 1):
        kw = stage_settings(config)
        if previous is not None:
            kw["init_from"] = str(previous)
        if steps:
            kw["steps"] = steps
        if device:
            kw["device"] = str(device)
        run = Path(out_dir) if len(configs) == 1 else Path(out_dir) / f"stage_{k}"
        cfg = LocaliserTrainConfig(bank=str(bank), out_dir=str(run), **kw)
        export, state = run / "localiser.pt", run / "last.pt"
        if export.is_file() and state.is_file() and \
                torch.load(state, map_location="cpu", weights_only=False).get("step", 0) >= cfg.steps:
            log(f"[localiser] stage {k}/{len(configs)} already trained: {export}")
            previous = export
            continue
        log(f"[localiser] stage {k}/{len(configs)}: {cfg.steps} steps in {run}")
        previous = train_localiser(cfg, log)
    return previous


@one_line_errors
def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Train the 3D organ localiser on the pseudo-patient bank (resumable).")
    ap.add_argument("--bank", required=True)
    ap.add_argument("--out_dir", required=True)
    ap.add_argument("--config", action="append", default=None,
                    help="JSON with LocaliserTrainConfig fields; repeat it for stages that continue each other "
                         "(then in OUT_DIR/stage_1, stage_2, …)")
    ap.add_argument("--steps", type=int, default=None, help="every stage's steps instead of its config's")
    ap.add_argument("--device", default=None,
                    help="auto, cpu, cuda or cuda:N for every stage (default: each config's own, else auto: a CUDA "
                         "GPU when one is usable)")
    a = ap.parse_args(argv)
    train_stages(a.bank, a.config or [None], a.out_dir, a.steps, device=a.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
