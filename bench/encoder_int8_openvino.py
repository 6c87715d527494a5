"""Would an int8 encoder make the OpenVINO CPU path faster where OpenVINO runs fp32 (CPUs without bf16)?

NNCF's post-training quantization of the engine's encoder graph (the ONNX export OpenVINO runs), calibrated
on sample-CT slices, against the fp32 graph: seconds per slice in the engine's batches of 4 (parallel infer
requests, as :class:`priorsam.models.openvino_encoder.OpenVinoLiteEncoder` runs them), and the cosine of the
three outputs against fp32 on 16 other slices.

NNCF is not a dependency of the project; install it beside the venv, not into it::

    pip install --no-deps --target /tmp/nncf_site nncf==3.4.0 ninja psutil pydot pyparsing tabulate
    PYTHONPATH=/tmp/nncf_site python bench/encoder_int8_openvino.py --out bench/results/encoder_int8_openvino.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def cosines(ref: list, other: list, k: int) -> dict:
    a = np.concatenate([o[k] for o in ref]).reshape(len(ref), -1)
    b = np.concatenate([o[k] for o in other]).reshape(len(other), -1)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {"cosine_mean": round(float(cos.mean()), 5), "cosine_min": round(float(cos.min()), 5),
            "rel_l2": round(float(np.linalg.norm(a - b) / np.linalg.norm(a)), 4)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--presets", nargs="+", default=["mixed", "performance"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import nncf
    import openvino as ov

    from common import machine_info
    from inputs import model_images
    from priorsam.models.cpu_runtime import OpenVinoCompiled
    from priorsam.models.onnx_encoder import export_onnx

    machine = {**machine_info(args.threads), "nncf": nncf.__version__}   # the load average before the runs
    fp32_path = str(export_onnx())
    calib = model_images(48, first=40)          # across the abdomen, none of the timed slices
    test = model_images(16).numpy()             # centred on the labelled organs
    feeds = [{0: test[i:i + 1]} for i in range(len(test))]

    def timed(path: str) -> tuple[list, list[float], str]:
        run = OpenVinoCompiled(path, args.threads, None, "throughput")
        run.run_each(feeds[:4], 3)              # warm-up
        per_slice = []
        for _ in range(3):
            t0 = time.perf_counter()
            outs = run.run_each(feeds, 3)
            per_slice.append((time.perf_counter() - t0) / len(feeds))
        return outs, per_slice, run.precision

    ref, ref_t, ref_prec = timed(fp32_path)
    rows = [{"graph": "fp32 (the engine's)", "precision": ref_prec, "s_per_slice": [round(t, 3) for t in ref_t]}]
    for preset in args.presets:
        t0 = time.perf_counter()
        q = nncf.quantize(ov.Core().read_model(fp32_path),
                          nncf.Dataset([calib[i:i + 1].numpy() for i in range(len(calib))]),
                          model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib),
                          preset=getattr(nncf.QuantizationPreset, preset.upper()))
        seconds = time.perf_counter() - t0
        xml = Path(args.out).with_suffix(f".{preset}.xml")
        ov.save_model(q, str(xml))
        outs, ts, prec = timed(str(xml))
        rows.append({"graph": f"int8, NNCF preset {preset}", "precision": prec, "quantize_s": round(seconds, 1),
                     "s_per_slice": [round(t, 3) for t in ts],
                     **{name: cosines(ref, outs, k) for k, name in enumerate(("embedding", "skip0", "skip1"))}})
        xml.unlink()
        xml.with_suffix(".bin").unlink()
    result = {"machine": machine, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
