"""PriorSAM CPU benchmarks against peer architectures: ``make bench`` (or ``python bench/run_all.py --out DIR``).

Measures, each part in a fresh process, medians of ``--runs`` (≥3) timed runs:

1. the frozen encoder's latency per slice under each CPU backend, with its accuracy against PyTorch eager
   (:mod:`encoders`);
2. peers at their published input sizes, random weights: PG-SAM's SAM ViT-H at 224 (two passes per slice),
   SAMed/H-SAM's ViT-B at 512, and a MONAI SegResNet 3D sliding window at 3 mm (:mod:`peers`);
3. whole-volume wall time and peak memory end to end (read → segment → write) on the sample CT and on the
   sample CT resampled to 512×512×150 (:mod:`volume`);
4. the Dice cost of the engine's volume-level savings (body skip, z_stride) and of faster encoders on the
   sample CT (:mod:`savings`);
5. training throughput with and without the feature cache (:mod:`training`);
6. where a CUDA GPU is usable, the engine on it: time per volume, peak GPU memory, Dice (:mod:`gpu`; on a
   CPU-only machine this part records that no GPU was there).

Writes ``bench.md`` and ``bench.json`` into ``--out`` and prints the markdown. ``--quick`` is a smoke run
(two backends, one peer, a 16-slice crop; minutes, not a measurement to quote).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import last_json, machine_info, python, run_child, run_child_rss  # noqa: E402

HERE = Path(__file__).resolve()


def default_weights() -> str | None:
    """$PRIORSAM_WEIGHTS, else the bundle's model.pt (None when neither is there)."""
    from priorsam.engine.weights import default_weights_path

    p = default_weights_path()
    return str(p) if p.is_file() else None


def weights_label(path: str) -> str:
    """The weights as the report names them: relative to the repository when inside it (a report read on
    another machine should not carry this one's folders), with the checkpoint's sha256."""
    from priorsam.assets import sha256_file

    p = Path(path).resolve()
    shown = p.relative_to(HERE.parents[1]) if p.is_relative_to(HERE.parents[1]) else p
    return f"{shown} (sha256 {sha256_file(p)[:16]}…)"


def random_weights(path: Path) -> str:
    """A real PriorSAM checkpoint whose heads are randomly initialised (timing only: Dice is meaningless)."""
    import torch

    from priorsam.models.spec import build_model, spec_for_bank, write_checkpoint
    from priorsam.priors.bank import load_prior_bank

    torch.manual_seed(0)
    bank = load_prior_bank("v1")
    spec = spec_for_bank(bank, heads={"refine_rounds": 2}, training={"note": "random heads (benchmark timing only)"})
    model = build_model(spec, encoder=None, binary_path=False, pretrained=False, prior_bank=bank)
    write_checkpoint(path, model.trainable_state_dict(), spec)
    return str(path)


# ---------------------------------------------------------------- parts (run in child processes)
def part_main(args) -> dict:
    if args.part == "encoder":
        from encoders import measure

        return measure(args.backend, args.threads, args.runs, Path(args.save))
    if args.part == "peer_vit":
        from peers import measure_vit

        return measure_vit(args.backend, args.threads, args.runs)
    if args.part == "peer_segresnet":
        from peers import measure_segresnet

        return measure_segresnet(args.image, args.threads, args.runs)
    if args.part == "training":
        from training import run

        return run(args.threads, args.runs, args.batch, args.cache)
    if args.part == "savings":
        from savings import run

        return run(args.image, args.label, args.weights, args.threads, args.quick)
    if args.part == "segment_once":
        from volume import segment_once

        spec = json.loads(args.spec)
        return segment_once(spec["image"], spec["out"], spec["weights"], spec["backend"], spec["threads"],
                            spec["z_stride"], spec["skip_body"])
    raise SystemExit(f"unknown part {args.part}")


def child(part: str, args, timeout: float, **extra) -> dict:
    """Run one part in a fresh interpreter; its JSON, or an ``error`` entry (one failing peer must not sink the run)."""
    cmd = [python(), str(HERE), "--part", part, "--threads", str(args.threads), "--runs", str(args.runs)]
    for k, v in extra.items():
        if v is not None:
            cmd += [f"--{k}", str(v)]
    if args.quick:
        cmd.append("--quick")
    label = " ".join(f"{k}={v}" for k, v in extra.items() if k not in ("save", "spec"))
    print(f"[bench] {part} {label} ...", file=sys.stderr, flush=True)
    res = run_child(cmd, timeout=timeout, env={"OMP_NUM_THREADS": str(args.threads)})
    if res["rc"] != 0 or res["timed_out"]:
        why = "timed out after %.0f s" % timeout if res["timed_out"] else res["stderr"].strip().splitlines()[-1:]
        print(f"[bench]   failed: {why}", file=sys.stderr, flush=True)
        return {"error": str(why), "stderr_tail": res["stderr"][-1500:], "process_wall_s": res["wall_s"]}
    out = last_json(res["stdout"])
    out["process_wall_s"] = res["wall_s"]
    print(f"[bench]   done in {res['wall_s']:.0f} s", file=sys.stderr, flush=True)
    return out


def gpu_part(args, weights: str, work: Path) -> dict:
    """bench/gpu.py on the CUDA GPU when one is usable (its gpu.json), else why not."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA GPU on this machine"}
    out = work / "gpu"
    cmd = [python(), str(HERE.parent / "gpu.py"), "--out", str(out), "--runs", str(args.runs),
           "--cli-runs", str(args.runs), "--weights", weights]
    print("[bench] gpu ...", file=sys.stderr, flush=True)
    res = run_child(cmd, timeout=3600)
    if res["rc"] != 0 or res["timed_out"]:
        why = (res["stderr"].strip().splitlines() or ["timed out"])[-1]
        return {"error": why, "stderr_tail": res["stderr"][-1500:]}
    return json.loads((out / "gpu.json").read_text())


# ---------------------------------------------------------------- the whole benchmark
def run_volumes(args, weights: str, volumes: dict, work: Path) -> dict:
    """End-to-end runs: the real CLI (default options) on each volume, then the variants on the large one."""
    from volume import cli_command, dice_per_organ, variant_command

    out: dict = {"cli": {}, "variants": []}
    for name, (image, label) in volumes.items():
        runs = []
        for r in range(args.runs):
            dest = work / f"{name}_cli_{r}.nii.gz"
            print(f"[bench] priorsam segment {name} run {r + 1}/{args.runs} ...", file=sys.stderr, flush=True)
            res = run_child_rss(cli_command(python(), str(image), str(dest), weights), timeout=args.volume_timeout,
                                env={"OMP_NUM_THREADS": str(args.threads)})
            if res["rc"] != 0:
                runs.append({"error": res["stderr"][-800:], **{k: res[k] for k in ("wall_s", "rc")}})
                break
            res["dice"] = dice_per_organ(dest, label)
            res.pop("stderr")
            runs.append(res)
            print(f"[bench]   {res['wall_s']:.1f} s, peak {res['peak_rss_mb']:.0f} MB, mean Dice "
                  f"{res['dice']['mean']:.3f}", file=sys.stderr, flush=True)
        out["cli"][name] = {"image": str(image), "runs": runs}
    name = "large" if "large" in volumes else next(iter(volumes))
    image, label = volumes[name]
    for backend, stride in args.variants:
        runs = []
        for r in range(args.variant_runs):
            dest = work / f"{name}_{backend}_s{stride}_{r}.nii.gz"
            print(f"[bench] variant {backend} z_stride {stride} on {name} run {r + 1}/{args.variant_runs} ...",
                  file=sys.stderr, flush=True)
            cmd = variant_command(python(), str(HERE), str(image), str(dest), weights, backend, args.threads, stride,
                                  True)
            res = run_child(cmd, timeout=args.volume_timeout, env={"OMP_NUM_THREADS": str(args.threads)})
            if res["rc"] != 0:
                runs.append({"error": res["stderr"][-800:], "wall_s": res["wall_s"]})
                break
            one = last_json(res["stdout"])
            one["wall_s"] = res["wall_s"]
            one["dice"] = dice_per_organ(dest, label)
            runs.append(one)
            print(f"[bench]   {one['wall_s']:.1f} s ({one['encoded_slices']} slices encoded), mean Dice "
                  f"{one['dice']['mean']:.3f}", file=sys.stderr, flush=True)
        out["variants"].append({"volume": name, "backend": backend, "z_stride": stride, "runs": runs})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="PriorSAM CPU benchmarks (see the module docstring).")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--quick", action="store_true", help="smoke run: cheapest pieces, tiny volume, 2 runs")
    ap.add_argument("--runs", type=int, default=None, help="timed runs per measurement (default 3; quick 2)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads (default: all cores)")
    ap.add_argument("--weights", default=None, help="PriorSAM checkpoint (default: bundle, else the lead's run)")
    ap.add_argument("--skip", nargs="*", default=[],
                    help="parts to leave out: encoders peers volumes savings training gpu")
    ap.add_argument("--variant-runs", type=int, default=1, help="runs of each end-to-end variant (default 1)")
    ap.add_argument("--volume-timeout", type=float, default=1800.0)
    ap.add_argument("--update", action="store_true",
                    help="start from OUT/bench.json and replace only the parts run now (see --skip)")
    ap.add_argument("--docs", default=None, help="also write the report here (e.g. docs/benchmarks.md)")
    ap.add_argument("--render", default=None, metavar="BENCH_JSON",
                    help="measure nothing: re-render the markdown of an earlier run's bench.json")
    # child-process arguments
    ap.add_argument("--part")
    ap.add_argument("--backend")
    ap.add_argument("--save")
    ap.add_argument("--image")
    ap.add_argument("--label")
    ap.add_argument("--spec")
    ap.add_argument("--cache")
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    if args.runs is None:
        args.runs = 2 if args.quick else 3
    if args.part:
        print(json.dumps(part_main(args)))
        return
    if args.render:
        from report import render

        text = render(json.loads(Path(args.render).read_text()))
        Path(args.render).with_suffix(".md").write_text(text)
        if args.docs:
            Path(args.docs).write_text(text)
        print(text)
        return

    from encoders import BACKENDS, QUICK_BACKENDS
    from inputs import make_cropped_sample, make_large_volume
    from peers import VIT_CONFIGS
    from priorsam.assets import cache_dir
    from priorsam.data.samples import sample_ct
    from report import render

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t_start = time.time()
    info = machine_info(args.threads)
    weights = args.weights or default_weights()
    tmpdir = tempfile.TemporaryDirectory(prefix="priorsam-bench-")
    work = Path(tmpdir.name)
    weights_note = weights and weights_label(weights)
    if weights is None:
        weights = random_weights(work / "random_heads.pt")
        weights_note = "none found: random heads (timings valid, Dice meaningless)"
    info["weights"] = weights_note
    data_dir = cache_dir("bench")
    s = sample_ct()
    if args.quick:
        volumes = {"sample_organs16": make_cropped_sample(data_dir, 16)}
        args.variants = [("openvino", 1)]
    else:
        volumes = {"sample": (s.image, s.label), "large": make_large_volume(data_dir)}
        # The defaults (OpenVINO, z-stride auto) run through the CLI above; these isolate each saving.
        args.variants = [("openvino", 1), ("onnxruntime", None)]
    stem = "bench_quick" if args.quick else "bench"
    previous = Path(args.out) / f"{stem}.json"
    results: dict = json.loads(previous.read_text()) if args.update and previous.is_file() else {}
    measured = results.get("measured", {})   # part -> when and on what load it was measured
    results.update({"machine": info, "args": {k: v for k, v in vars(args).items() if k in
                                              ("quick", "runs", "threads", "variant_runs", "skip", "update")},
                    "volumes": {k: [str(v[0]), str(v[1])] for k, v in volumes.items()}})

    if "encoders" not in args.skip:
        enc = {}
        for b in (QUICK_BACKENDS if args.quick else BACKENDS):
            enc[b] = child("encoder", args, timeout=1200, backend=b, save=work / f"enc_{b}.npz")
        from encoders import accuracy

        ref = work / "enc_torch_eager.npz"
        for b, r in enc.items():
            if "error" not in r and b != "torch_eager" and ref.is_file():
                r["accuracy"] = accuracy(ref, work / f"enc_{b}.npz")
        results["encoders"] = enc
    if "peers" not in args.skip:
        peers = {}
        for name in (["vitb512"] if args.quick else list(VIT_CONFIGS)):
            peers[name] = child("peer_vit", args, timeout=1200, backend=name)
        if not args.quick:
            peers["segresnet3d"] = child("peer_segresnet", args, timeout=2400, image=s.image)
        results["peers"] = peers
    if "training" not in args.skip:
        results["training"] = child("training", args, timeout=1800, batch=2 if args.quick else 4)
    if "volumes" not in args.skip:
        results["volume"] = run_volumes(args, weights, volumes, work)
    if "savings" not in args.skip:
        img, lab = volumes["sample_organs16"] if args.quick else (s.image, s.label)
        results["savings"] = child("savings", args, timeout=3600, image=img, label=lab, weights=weights)
    if "gpu" not in args.skip and not args.quick:
        results["gpu"] = gpu_part(args, weights, work)
    now = time.strftime("%Y-%m-%d %H:%M")
    for part, key in (("encoders", "encoders"), ("peers", "peers"), ("training", "training"), ("volumes", "volume"),
                      ("savings", "savings"), ("gpu", "gpu")):
        if part not in args.skip:
            measured[key] = {"date": now, "loadavg_end": list(os.getloadavg())}
    results["measured"] = measured
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["machine"]["bench_wall_s"] = time.time() - t_start
    text = render(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
    if args.docs:
        Path(args.docs).write_text(text)
    print(text)
    tmpdir.cleanup()


if __name__ == "__main__":
    main()
