"""Evaluation by held-out anatomies: pseudo-patients whose anatomy no localiser or head trained on.

    python -m priorsam.evaluation.anatomy_holdout --bank CACHE --runs RUNS.json --out docs/anatomy_holdout

Each held-out pseudo-patient (the sample CT warped onto an anatomy of the bank that training never
saw) is rendered in every appearance setting: the contrast phases of :mod:`priorsam.data.appearance`
(native, arterial/CT angiography, portal-venous, delayed), portal-venous with arms beside the trunk
and a table, :data:`~priorsam.data.appearance.UNSEEN_SETTING` (an appearance never drawn in
training), ``cta_crop``: the arterial phase reconstructed on a 150 mm field around the aorta, and two
thin native slabs (3 slices, 9 mm, through the liver's / the kidneys' largest cross-section; up to bundle
0.7.0 too little z for the localiser, so the per-slice heads worked alone there, as they still do on the
validation patient's 3 mm). ``upper_<N>mm``: a
partial scan of the upper abdomen, N mm of z (portal-venous, arms beside the trunk and a table) centred
where most of the eight organs meet — the contrast CT of 20 slices of 2 mm that started the bank.
Every run of RUNS.json (``{"name", "weights", "options", "what", "settings"?, "localiser_runtime"?}``)
segments each of them through the engine; Dice and HD95 (mm and voxels) per organ against the warped sample labels,
scored where the pseudo-patient has an image (:meth:`~priorsam.data.pseudo_patients.PseudoPatient.supported`:
beyond the sample CT's field of view its labels go on over the registration's fill, which no model
can segment; training ignores the same voxels). Each row also keeps the Dice over all voxels
(``dice_all_voxels``), the stricter figure the tables give beside the mean.
A run with ``"localiser_only": true`` scores the 3D localiser alone, on its own 4 mm grid (per organ
the component it keeps, against the labels resampled there by nearest neighbour).

What this measures: *anatomy transfer*. Every pseudo-patient carries the sample CT's texture, so
these numbers say whether the model finds organs where another patient has them, not whether it
copes with another scanner's images (the validation patient and real CT do that).
"""
from __future__ import annotations

import argparse
import json
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from ..config_files import read_json
from ..data import appearance as app
from ..data.pseudo_patients import PseudoPatient, list_bank, load
from ..engine.segment import SegmentOptions, Segmenter
from ..errors import InputError, one_line_errors
from ..io.volume import Source, Volume
from .metrics import evaluate_case, summarise
from .runs import run_weights

SETTINGS = ["native", "arterial", "portal_venous", "delayed", "portal_venous_arms_table", "unseen", "cta_crop",
            "slab_liver", "slab_kidneys"]
CTA_FOV_MM = 150.0   # cta_crop: a CT angiography reconstructed on a 150 mm field around the aorta
# Thin slabs (native, 3 slices; the heads answered alone there up to bundle 0.7.0, which needed 40 mm of z
# for the localiser); centred on the largest cross-section of the liver / the kidneys.
SLAB_SETTINGS = {"slab_liver": (5,), "slab_kidneys": (2, 3)}
SLAB_SLICES = 3
# upper_<N>mm: a partial upper-abdominal scan of N mm of z, rendered as portal-venous with arms and a table
UPPER = "upper_"


def upper_mm(setting: str) -> float | None:
    """N of an ``upper_<N>mm`` setting, else None."""
    rest = setting[len(UPPER):] if setting.startswith(UPPER) else ""
    return float(rest[:-2]) if rest.endswith("mm") and rest[:-2].isdigit() and int(rest[:-2]) > 0 else None


def parse_setting(setting: str) -> tuple[str, int]:
    """A setting's base name and, for a slab, how many slices its window is moved along z:
    ``slab_liver+2`` is the liver slab two slices higher in the array, ``slab_kidneys-1`` one lower.
    One slab position scores organs the slab only grazes by chance (a registration a voxel different
    moves it), so the slab's figure is steadier averaged over a few positions."""
    for base in SLAB_SETTINGS:
        rest = setting[len(base):]
        if setting.startswith(base) and (not rest or (rest[0] in "+-" and rest[1:].isdigit())):
            return base, int(rest or 0)
    if upper_mm(setting) is not None:
        return setting, 0
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}: use one of {', '.join(SETTINGS)} (a slab may add +N or "
                         f"-N), or {UPPER}<N>mm")
    return setting, 0


def render(pp: PseudoPatient, setting: str, names: dict[int, str]) -> np.ndarray:
    """The pseudo-patient's CT (X,Y,Z HU) in one appearance ``setting``; seeded per case and setting."""
    setting = parse_setting(setting)[0]     # a moved slab shows the same rendered CT
    if upper_mm(setting) is not None:
        setting = UPPER                     # every coverage shows the same rendered CT
    rng = np.random.default_rng(zlib.crc32(f"{pp.case_id}/{setting}".encode()))
    sp = float(pp.spacing[0])
    ct = pp.ct.astype(np.float32)
    if setting == "unseen":
        return app.apply_unseen(ct, pp.full, names, rng, sp)
    phase = {"portal_venous_arms_table": "portal_venous", UPPER: "portal_venous", "cta_crop": "arterial",
             **{k: "native" for k in SLAB_SETTINGS}}.get(setting, setting)
    if phase != "native":
        ct, _ = app.apply_phase(ct, pp.full, names, phase, rng, sp)
    if setting in ("portal_venous_arms_table", UPPER):
        ct = app.add_arms_and_table(ct, sp, rng)
    return app.add_noise(ct, 10.0, rng)


def field_of_view(pp: PseudoPatient, setting: str) -> tuple[slice, slice, slice]:
    """The (x, y, z) crop of a setting: the whole volume; for ``cta_crop`` a reconstruction of
    :data:`CTA_FOV_MM` centred on the aorta (the real CTA of the issue that started the bank: organs cut
    by the field's edge, the rest of the trunk missing); for a slab setting (:data:`SLAB_SETTINGS`)
    :data:`SLAB_SLICES` slices centred where its organs' cross-section with an image is largest,
    moved by the setting's shift (:func:`parse_setting`); for ``upper_<N>mm`` N mm of z centred on the slice
    where the most of the eight organs have an image (then the largest area of them)."""
    whole = slice(None)
    setting, shift = parse_setting(setting)
    mm = upper_mm(setting)
    if mm is not None:
        n = max(1, int(round(mm / float(pp.spacing[2]))))
        organs = (pp.ours > 0) & pp.supported()
        present = np.stack([((pp.ours == k) & organs).any((0, 1)) for k in np.unique(pp.ours[organs])]).sum(0)
        centre = int(np.lexsort((organs.sum((0, 1)), present))[-1])
        z0 = int(np.clip(centre - n // 2, 0, max(0, pp.ours.shape[2] - n)))
        return whole, whole, slice(z0, z0 + n)
    if setting in SLAB_SETTINGS:
        area = (np.isin(pp.ours, SLAB_SETTINGS[setting]) & pp.supported()).sum((0, 1))
        z0 = int(np.clip(int(np.argmax(area)) - SLAB_SLICES // 2 + shift, 0, max(0, pp.ours.shape[2] - SLAB_SLICES)))
        return whole, whole, slice(z0, z0 + SLAB_SLICES)
    if setting != "cta_crop":
        return whole, whole, whole
    from ..labels import organ_id

    aorta = np.argwhere(pp.ours == organ_id("aorta"))
    cx, cy = (aorta[:, :2].mean(0) if len(aorta) else np.array(pp.ours.shape[:2]) / 2)
    half = CTA_FOV_MM / float(pp.spacing[0]) / 2
    x0, y0 = int(max(0, round(cx - half))), int(max(0, round(cy - half)))
    return (slice(x0, int(min(pp.ours.shape[0], round(cx + half)))),
            slice(y0, int(min(pp.ours.shape[1], round(cy + half)))), whole)


def as_volume(ct: np.ndarray, pp: PseudoPatient, crop: tuple[slice, ...] = (slice(None),) * 3) -> Volume:
    """The rendered CT as a library Volume; a crop keeps the voxels where they are in space."""
    crop = tuple(crop) + (slice(None),) * (3 - len(crop))
    start = np.array([crop[0].start or 0, crop[1].start or 0, crop[2].start or 0, 1], dtype=float)
    affine = pp.affine.copy()
    affine[:3, 3] = (pp.affine @ start)[:3]
    ct = np.ascontiguousarray(ct[crop])
    src = Source(path=f"{pp.case_id}.nii.gz", format="nifti", shape=tuple(ct.shape), affine=affine,
                 to_canonical=np.array([[0, 1], [1, 1], [2, 1]], dtype=float))
    return Volume(ct, affine, src)


def rendered(bank: str, cases: list[str], settings: list[str]):
    """Every case and setting as the tables see it: yields (case id, setting, pseudo-patient, crop, Volume)."""
    from ..data.samples import totalsegmentator_class_names

    names = totalsegmentator_class_names()
    recs = {r["case_id"]: r for r in list_bank(bank, kept_only=False)}
    for cid in cases:
        pp = load(recs[cid]["folder"])
        for setting in settings:
            crop = field_of_view(pp, setting)
            yield cid, setting, pp, crop, as_volume(render(pp, setting, names), pp, crop)


def measure(bank: str, runs: list[dict], cases: list[str], settings: list[str], log=print,
            partial: Path | None = None, device: str = "cpu") -> list[dict]:
    """Every run on every held-out case and setting; ``partial``: rows so far are saved there after each case.
    ``device``: where the engine runs (the documented figures were measured on CPUs; a GPU's answers agree
    closely, not to the voxel), kept in every row."""
    from ..engine.device import resolve_device

    dev = resolve_device(device)   # before a case is rendered: a GPU asked for and missing fails at once
    segs = {r["name"]: _segmenter(r, dev) for r in runs}
    rows = []
    for cid, setting, pp, crop, vol in rendered(bank, cases, settings):
        gt = np.ascontiguousarray(pp.ours[crop])
        support = np.ascontiguousarray(pp.supported()[crop])
        memo: dict = {}
        for run in runs:
            # Localiser-only runs score whole volumes and the crop unless their settings name a slab.
            default = [s for s in settings
                       if not (run.get("localiser_only") and parse_setting(s)[0] in SLAB_SETTINGS)]
            if setting not in run.get("settings", default):
                continue
            seg = segs[run["name"]]
            t0 = time.time()
            if run.get("localiser_only"):
                row = _localiser_only(seg, vol, gt, support, cid)
            else:
                seg.feature_memo = memo   # runs share encoder features of identical slices
                res = seg.segment(vol, show_bar=False)
                row = {"slices_run": res.slices_run, "slices": int(vol.shape[2]), "localiser": res.localiser,
                       **_scores(res.labels, gt, support, pp.spacing, cid)}
            row.update(run=run["name"], case=cid, setting=setting, seconds=round(time.time() - t0, 1),
                       device=str(dev))
            rows.append(row)
            mean = np.nanmean([v["dice"] for v in row["organs"].values()])
            log(f"[holdout] {run['name']} {cid} {setting}: mean Dice {mean:.3f}, "
                f"{row.get('slices_run', '-')}/{vol.shape[2]} slices, {row['seconds']} s")
        if partial is not None and setting == settings[-1]:
            partial.write_text(json.dumps(rows))
    return rows


def _scores(pred: np.ndarray, gt: np.ndarray, support: np.ndarray, spacing, cid: str) -> dict:
    """Per-organ metrics where the image is (``organs``) and Dice over all voxels (``dice_all_voxels``)."""
    from ..labels import labels as label_table

    case = evaluate_case(np.where(support, pred, 0), np.where(support, gt, 0), spacing, cid)
    every = {}
    for lab in label_table():
        p, g = pred == lab.id, gt == lab.id
        n = int(p.sum()) + int(g.sum())
        every[lab.name] = 2.0 * float((p & g).sum()) / n if g.any() else float("nan")
    return {"organs": case["organs"], "dice_all_voxels": every}


def _segmenter(run: dict, device: torch.device = torch.device("cpu")) -> Segmenter:
    """The run's engine on ``device``; ``"localiser_runtime"`` (``torch`` or ``openvino``) overrides where its
    localiser runs, the encoder's runtime staying the options' (to compare the two localiser runtimes alone)."""
    options = SegmentOptions(**run.get("options", {}))
    if run.get("localiser_runtime") is None:
        return Segmenter(run_weights(run), str(device), options)
    if run["localiser_runtime"] == "openvino" and device.type != "cpu":
        raise InputError(f"run {run['name']!r} runs its localiser in OpenVINO, which runs on CPUs only: measure it "
                         "with --device cpu")
    from ..engine.weights import load_priorsam

    return Segmenter(model=load_priorsam(str(run_weights(run)), str(device), run["localiser_runtime"]),
                     device=str(device), options=options)


def _localiser_only(seg: Segmenter, vol: Volume, gt: np.ndarray, support: np.ndarray, cid: str) -> dict:
    from ..data.framed_volume import resample_labels

    loc_net = seg.model.localiser
    res = seg.localise(vol)   # the engine's own call: the run's options (pieces) apply
    if not res.usable:
        # Too thin, or refused by the anatomy guard: the localiser alone gives nothing here, scored as such.
        return {**_scores(np.zeros_like(gt), gt, support, vol.spacing, cid), "localiser": res.summary()}
    coarse = res.coarse_labels
    return {**_scores(coarse, resample_labels(gt, coarse.shape), resample_labels(support, coarse.shape),
                      (loc_net.spacing_mm,) * 3, cid), "localiser": res.summary()}


def per_setting(rows: list[dict], run: str, settings: list[str], organs: list[str]):
    """For each setting the run has rows in: (setting, its rows, ``summarise`` over them)."""
    for st in settings:
        mine = [r for r in rows if r["run"] == run and r["setting"] == st]
        if mine:
            yield st, mine, summarise([{"case": r["case"], "organs": r["organs"]} for r in mine], organs)


def drawn_where_absent(rows: list[dict]) -> str:
    """The organs these rows' answers drew where the reference has none (``false_positive``): they have no Dice,
    so the means leave them out, and this cell says how many there were and how large (voxels)."""
    sizes = sorted(m["pred_voxels"] for r in rows for m in r["organs"].values() if m["false_positive"])
    if not sizes:
        return "0"
    return f"{len(sizes)} ({sizes[0]}–{sizes[-1]} vox)" if len(sizes) > 1 else f"1 ({sizes[0]} vox)"


def tables(rows: list[dict], runs: list[str], settings: list[str]) -> str:
    """Per run, the mean Dice of each organ per setting, the mean over organs (Dice, HD95, Dice over every
    voxel) and the organs drawn where the reference has none (:func:`drawn_where_absent`)."""
    from ..labels import labels as label_table

    organs = [lab.name for lab in label_table()]
    lines = []
    for run in runs:
        lines += [f"### {run}", "", "| setting | cases | " + " | ".join(organs)
                  + " | mean Dice | mean HD95 mm | mean Dice, all voxels | drawn where absent |",
                  "|---|---|" + "---|" * (len(organs) + 4)]
        for st, mine, s in per_setting(rows, run, settings, organs):
            every = [r["dice_all_voxels"] for r in mine if "dice_all_voxels" in r]
            # Same averaging as the main figure: per organ over cases, then over organs.
            all_mean = (f"{np.nanmean([np.nanmean([e[o] for e in every]) for o in organs]):.3f}"
                        if len(every) == len(mine) else "–")
            lines.append(f"| {st} | {len(mine)} | " + " | ".join(f"{s['organs'][o]['dice']:.3f}" for o in organs)
                         + f" | **{s['mean']['dice']:.3f}** | {s['mean']['hd95_mm']:.1f} | {all_mean} | "
                         f"{drawn_where_absent(mine)} |")
        lines.append("")
    return "\n".join(lines)


def hd95_tables(rows: list[dict], runs: list[str], settings: list[str]) -> str:
    """Per run, the HD95 in mm of each organ per setting: the mean over the cases that hold the organ and where
    the run drew it (``summarise``'s averaging); a cell says how many of those cases the run missed, which have
    no distance and are left out of its mean (their Dice, 0, is in :func:`tables`)."""
    from ..labels import labels as label_table

    organs = [lab.name for lab in label_table()]
    lines = []
    for run in runs:
        lines += [f"### {run}: HD95 (mm) per organ", "", "| setting | cases | " + " | ".join(organs)
                  + " | mean HD95 mm |", "|---|---|" + "---|" * (len(organs) + 1)]
        for st, mine, s in per_setting(rows, run, settings, organs):
            cells = []
            for o in organs:
                v, missed = s["organs"][o]["hd95_mm"], s["organs"][o]["missed"]
                cells.append(("–" if np.isnan(v) else f"{v:.1f}") + (f" ({missed} missed)" if missed else ""))
            lines.append(f"| {st} | {len(mine)} | " + " | ".join(cells) + f" | {s['mean']['hd95_mm']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def _setting(text: str) -> str:
    try:
        parse_setting(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


@one_line_errors
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bank", required=True)
    ap.add_argument("--runs", required=True, help="JSON list of {name, weights, options, what}")
    ap.add_argument("--cases", nargs="*", default=None, help="held-out case ids (default: the first run's "
                                                               "localiser holdout)")
    ap.add_argument("--settings", nargs="*", default=SETTINGS, type=_setting,
                    help="appearance settings; a slab may be moved along z, e.g. slab_liver+1 slab_liver-1; "
                         "upper_42mm: 42 mm of the upper abdomen")
    ap.add_argument("--out", required=True, help="output prefix: writes OUT.json and OUT.md")
    from ..engine.device import MEASURE_DEVICE_HELP, resolve_device

    ap.add_argument("--device", default="cpu", help=MEASURE_DEVICE_HELP)
    a = ap.parse_args(argv)

    resolve_device(a.device)   # before the runs file and weights are read or the output folder is made
    runs = read_json(a.runs, "runs file")
    if not isinstance(runs, list) or not all(isinstance(r, dict) and "name" in r for r in runs):
        raise InputError(f"runs file {a.runs} must hold a JSON list of runs, each with a name")
    cases = a.cases
    if not cases:
        from ..models.spec import read_checkpoint

        _, spec = read_checkpoint(run_weights(runs[0]))
        cases = list(spec.localiser.holdout)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = measure(a.bank, runs, cases, a.settings, partial=out.with_suffix(".partial.json"), device=a.device)
    out.with_suffix(".json").write_text(json.dumps({"cases": cases, "settings": a.settings, "runs": runs,
                                                   "rows": rows}, indent=1))
    names = [r["name"] for r in runs]
    md = tables(rows, names, a.settings) + "\n" + hd95_tables(rows, names, a.settings)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
