"""The engine on a CUDA GPU: whole-volume time, peak GPU memory, and agreement with the CPU engine.

    python bench/gpu.py --out DIR [--device cuda] [--runs 5] [--cli-runs 3] [--reference DIR] [--weights W]
                        [--profile]

On the 512×512×150 volume of ``make bench`` and on the sample CT:

1. the command a user runs, ``python -m priorsam segment IMAGE OUT --device DEVICE``, each run a fresh
   process (imports, model load and CUDA start-up included);
2. in one process with the model loaded once (what a batch job or the Slicer module pays per volume):
   read, segment and write, the GPU synchronised before each clock read, the slices the encoder ran and
   the peak GPU memory;
3. one box prompt per volume (``segment_box`` around the liver's labelled extent);
4. Dice of every label map against the volume's labels and, with ``--reference``, per organ against the
   label maps another run of this script wrote (e.g. ``--device cpu`` on a CPU machine: the engine's CPU
   runtime), so the GPU path is checked against the CPU path on the same input;
5. with ``--profile``, one more in-process segment per volume under cProfile (``profile_TAG_DEVICE.txt``):
   where the time of a GPU run goes, CPU-side work included.

Writes ``gpu.json``, ``gpu.md`` and the label maps (``large_DEVICE.nii.gz``, ``sample_DEVICE.nii.gz``,
``large_box_DEVICE.nii.gz``, ``sample_box_DEVICE.nii.gz``) into ``--out``. ``--device cuda`` without a
usable GPU is refused in one line.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, profile_call, python, run_child_rss, stats  # noqa: E402
from volume import CountingEncoder, cli_command, dice_per_organ  # noqa: E402


def _liver_id() -> int:
    from priorsam.labels import labels

    return next(lab.id for lab in labels() if lab.name == "liver")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sha(path: Path) -> str:
    """Digest of the voxels and affine (not the file: gzip headers differ between machines)."""
    import nibabel as nib

    img = nib.load(str(path))
    h = hashlib.sha256(np.ascontiguousarray(np.asarray(img.dataobj)).tobytes())
    h.update(np.asarray(img.affine, dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def liver_box(label_path: Path, liver: int) -> str:
    """The liver's labelled extent in stored voxel indices, ``x0,y0,z0,x1,y1,z1``."""
    import nibabel as nib

    lab = np.asarray(nib.load(str(label_path)).dataobj)
    idx = np.argwhere(lab == liver)
    lo, hi = idx.min(0), idx.max(0)
    return ",".join(str(int(v)) for v in (*lo, *hi))


def in_process(image: Path, labels: Path, out_dir: Path, tag: str, device_name: str, runs: int,
               weights: str | None = None, profile: bool = False) -> dict:
    """Model loaded once; ``runs`` timed read → segment → write passes after one warm-up, then one box;
    with ``profile`` one more segment under cProfile (``profile_TAG_DEVICE.txt``)."""
    import torch

    from priorsam.engine.box_segment import segment_box
    from priorsam.engine.device import resolve_device
    from priorsam.engine.segment import Segmenter, SegmentOptions
    from priorsam.engine.weights import load_priorsam
    from priorsam.io import read_volume, write_label_map

    device = resolve_device(device_name)
    t = time.perf_counter()
    model = load_priorsam(weights, str(device))
    # On a GPU the engine runs the model's own PyTorch encoder, so wrapping it only counts slices; on a
    # CPU the engine's own runtime choice is what is measured, left unwrapped.
    counter = CountingEncoder(lambda images: model.encode(images.to(device))) if device.type == "cuda" else None
    seg = Segmenter(weights, str(device), SegmentOptions(), model=model, encoder=counter)
    _sync(device)
    load_s = time.perf_counter() - t
    out_path = out_dir / f"{tag}_{device.type}.nii.gz"
    rows = []
    for _ in range(runs + 1):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if counter is not None:
            counter.slices = 0
        t0 = time.perf_counter()
        vol = read_volume(image)
        t1 = time.perf_counter()
        res = seg.segment(vol, show_bar=False)
        _sync(device)
        t2 = time.perf_counter()
        write_label_map(vol, res.labels, out_path)
        t3 = time.perf_counter()
        row = {"read_s": t1 - t0, "segment_s": t2 - t1, "write_s": t3 - t2, "total_s": t3 - t0,
               "encoded_slices": counter.slices if counter is not None else None}
        if device.type == "cuda":
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        rows.append(row)
    profile_file = None
    if profile:
        # On a GPU, kernels run asynchronously: their time shows at the next call that waits for them
        # (a .cpu() copy, the final synchronise), while CPU-side work shows as itself. The last timed
        # run's volume is segmented again; the box prompt below uses it too.
        profile_file = f"profile_{tag}_{device.type}.txt"
        profile_call(lambda: (seg.segment(vol, show_bar=False), _sync(device)), out_dir / profile_file,
                     f"Segmenter.segment on {tag} ({device}), model loaded, after the timed runs")
    liver = _liver_id()
    box = liver_box(labels, liver)
    t = time.perf_counter()
    mask = segment_box(vol, box, space="voxel", device=str(device), show_bar=False)
    _sync(device)
    box_s = time.perf_counter() - t
    # segment_box returns a canonical-RAS mask; write_label_map puts it back on the input's grid.
    box_path = out_dir / f"{tag}_box_{device.type}.nii.gz"
    write_label_map(vol, mask.astype(np.uint8) * liver, box_path)
    timed = rows[1:]
    return {"tag": tag, "device": str(device), "shape": list(vol.shape), "image_sha256": _sha(image),
            "model_load_s": load_s, "warmup": rows[0], "runs": timed,
            "segment_s": stats([r["segment_s"] for r in timed]), "total_s": stats([r["total_s"] for r in timed]),
            "encoded_slices": timed[-1]["encoded_slices"], "slices": int(vol.shape[2]),
            "peak_gpu_mb": max(r["peak_gpu_mb"] for r in rows) if device.type == "cuda" else None,
            "profile": profile_file,
            "dice": dice_per_organ(out_path, labels), "labels": out_path.name,
            "box": {"box_voxel": box, "seconds": box_s, "labels": box_path.name,
                    "liver_dice": dice_per_organ(box_path, labels)["organs"]["liver"]}}


def agreement(run: dict, out_dir: Path, reference: Path, tag: str) -> dict | None:
    """Per-organ Dice of this run's label maps against those the reference run (its ``gpu.json``) wrote."""
    ref_json = reference / "gpu.json"
    if not ref_json.is_file():
        raise SystemExit(f"bench/gpu.py: {ref_json} not found (--reference names another run's --out)")
    ref = json.loads(ref_json.read_text())
    other = ref["volumes"].get(tag)
    if other is None:
        return None
    # Another machine's torch may round the resampled volume differently; say so beside the figures.
    return {"reference": f"{ref['device']}: {other['labels']}",
            "same_input": other["image_sha256"] == run["image_sha256"],
            "labels": dice_per_organ(out_dir / run["labels"], reference / other["labels"]),
            "box": dice_per_organ(out_dir / run["box"]["labels"], reference / other["box"]["labels"])}


def render(res: dict) -> str:
    m = res["machine"]
    lines = [f"# PriorSAM on `{res['device']}`", "",
             f"Machine: {m.get('gpu', 'no GPU')}; {m['cpu']}, {m['cores']} cores; torch {m['torch']}, "
             f"MONAI {m['monai']}, Python {m['python']}; {m['started']}.", "",
             "| volume | CLI, fresh process (median s) | in process: segment (median s) | read+segment+write (s) "
             "| slices encoded / all | peak GPU MB | mean Dice vs labels | box: s, liver Dice |",
             "|---|---|---|---|---|---|---|---|"]
    for tag, r in res["volumes"].items():
        cli = res["cli"].get(tag, {})
        n = cli.get("wall_s", {}).get("n")
        cli_txt = f"{cli['wall_s']['median']:.1f} (n={n})" if n else "—"
        enc = f"{r['encoded_slices']} / {r['slices']}" if r["encoded_slices"] is not None else f"— / {r['slices']}"
        gpu = f"{r['peak_gpu_mb']:.0f}" if r.get("peak_gpu_mb") else "—"
        lines.append(f"| {tag} {'×'.join(map(str, r['shape']))} | {cli_txt} | {r['segment_s']['median']:.2f} "
                     f"({r['segment_s']['min']:.2f}–{r['segment_s']['max']:.2f}) | {r['total_s']['median']:.2f} | {enc} "
                     f"| {gpu} | {r['dice']['mean']:.4f} | {r['box']['seconds']:.2f}, {r['box']['liver_dice']:.4f} |")
    agree = {t: a for t, a in res.get("agreement", {}).items() if a}
    if agree:
        lines += ["", "Agreement with the reference run's label maps (Dice per organ present in the labels):", ""]
        for tag, a in agree.items():
            organs = ", ".join(f"{k} {v:.4f}" for k, v in a["labels"]["organs"].items())
            same = "" if a["same_input"] else " (**the two runs' input volumes differ**)"
            lines.append(f"- {tag} vs {a['reference']}{same}: mean {a['labels']['mean']:.4f} ({organs}); "
                         f"box {a['box']['mean']:.4f}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--runs", type=int, default=5, help="timed in-process passes per volume (after one warm-up)")
    ap.add_argument("--cli-runs", type=int, default=3, help="fresh-process CLI runs per volume (0: none)")
    ap.add_argument("--reference", type=Path, help="folder of another run's label maps to compare with")
    ap.add_argument("--weights", help="PriorSAM checkpoint (default: the bundle's demo weights)")
    ap.add_argument("--profile", action="store_true",
                    help="one more in-process segment per volume under cProfile: profile_TAG_DEVICE.txt")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.cli_runs < 0:
        ap.error("--runs must be at least 1 and --cli-runs at least 0")

    from priorsam.data.samples import sample_ct
    from priorsam.engine.device import resolve_device
    from priorsam.errors import InputError

    try:
        device = resolve_device(args.device)
    except InputError as exc:
        print(f"bench/gpu.py: {exc}", file=sys.stderr)
        return 2
    from inputs import make_large_volume

    args.out.mkdir(parents=True, exist_ok=True)
    s = sample_ct()
    volumes = {"large": make_large_volume(args.out / "data"), "sample": (s.image, s.label)}
    machine = machine_info(0)
    if device.type == "cuda":
        import torch

        machine["gpu"] = torch.cuda.get_device_name(device)
    res = {"device": str(device), "machine": machine, "volumes": {}, "cli": {}, "agreement": {}}
    for tag, (image, labels) in volumes.items():
        res["volumes"][tag] = in_process(Path(image), Path(labels), args.out, tag, args.device, args.runs,
                                         args.weights, args.profile)
        walls = []
        cmd = cli_command(python(), str(image), str(args.out / f"cli_{tag}.nii.gz"), args.weights)
        for _ in range(args.cli_runs):
            r = run_child_rss(cmd + ["--device", args.device], timeout=1800)
            if r["rc"] != 0:
                raise SystemExit(f"bench/gpu.py: the CLI failed on {tag}: {r['stderr'][-800:]}")
            walls.append(r["wall_s"])
        res["cli"][tag] = {"wall_s": stats(walls)}
        if args.reference:
            res["agreement"][tag] = agreement(res["volumes"][tag], args.out, args.reference, tag)
    (args.out / "gpu.json").write_text(json.dumps(res, indent=1))
    md = render(res)
    (args.out / "gpu.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
