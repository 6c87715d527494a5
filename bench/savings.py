"""Volume-level savings and their accuracy cost on the sample CT, against its labels.

Each row is one full :meth:`priorsam.engine.segment.Segmenter.segment` run with some
:class:`~priorsam.engine.segment.SegmentOptions` (body skip, ``z_stride``) or encoder backend, scored by
:func:`priorsam.evaluation.evaluate_case` (MONAI Dice, 3D, on the CT's own grid).

All rows run in one process and share a per-backend memo of encoder outputs keyed by the exact
model-input bytes: a slice that two rows both encode gives bit-identical features, so re-running the
encoder would change the time, not the result. The cost column is therefore the number of slices
each row sends to the encoder (what the option saves), not its wall time — wall times are measured
end to end in :mod:`volume`.
"""
from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

# (row name, backend, SegmentOptions overrides)
ROWS = [
    ("every slice, fp32 ONNX Runtime (reference)", "onnxruntime", {"z_stride": 1}),
    ("no body skip", "onnxruntime", {"z_stride": 1, "skip_outside_body": False}),
    ("z_stride 2", "onnxruntime", {"z_stride": 2}),
    ("z_stride 3", "onnxruntime", {"z_stride": 3}),
    ("z_stride 4", "onnxruntime", {"z_stride": 4}),
    ("z_stride 3, old agreement rule (Dice ≥ 0.85)", "onnxruntime", {"z_stride": 3, "z_agree_dice": 0.85}),
    ("z-stride auto (run slices ≈ 10 mm apart)", "onnxruntime", {}),
    ("encoder OpenVINO (bf16 on this CPU), every slice", "openvino", {"z_stride": 1}),
    ("encoder ORT int8 dynamic (MatMul), every slice", "ort_int8_dynamic", {"z_stride": 1}),
    ("engine defaults: OpenVINO + z-stride auto", "openvino", {}),
]
QUICK_ROWS = ROWS[:1] + ROWS[6:7]


class MemoEncoder:
    """Encoder callable with a memo per slice; counts the slices that were asked for."""

    def __init__(self, encode):
        self.encode = encode
        self.memo: dict[str, tuple] = {}
        self.requested = 0

    def __call__(self, images):
        import torch

        from priorsam.models.image_encoder import EncoderFeatures

        keys = [hashlib.sha1(images[i].float().contiguous().numpy().tobytes()).hexdigest() for i in range(len(images))]
        self.requested += len(keys)
        todo = [i for i, k in enumerate(keys) if k not in self.memo]
        if todo:
            f = self.encode(images[todo])
            for j, i in enumerate(todo):
                self.memo[keys[i]] = (f.embedding[j], f.skips[0][j], f.skips[1][j])
        parts = [self.memo[k] for k in keys]
        return EncoderFeatures(torch.stack([p[0] for p in parts]), (torch.stack([p[1] for p in parts]),
                                                                      torch.stack([p[2] for p in parts])))


def run(image: str, label: str, weights: str | None, threads: int, quick: bool) -> dict:
    import numpy as np

    from common import peak_rss_mb, set_threads
    from encoders import feature_runner
    from priorsam.engine.segment import Segmenter, SegmentOptions
    from priorsam.evaluation import evaluate_case
    from priorsam.io import read_label_map, read_volume

    set_threads(threads)
    vol = read_volume(image)
    ref = read_label_map(label).array.astype(np.uint8)  # canonical RAS, like the engine's output
    if ref.shape != vol.array.shape:
        raise RuntimeError(f"sample labels {ref.shape} are not on the CT grid {vol.array.shape}")
    encoders: dict[str, MemoEncoder] = {}
    rows = []
    for name, backend, over in (QUICK_ROWS if quick else ROWS):
        if backend not in encoders:
            encoders[backend] = MemoEncoder(feature_runner(backend, threads))
        enc = encoders[backend]
        seg = Segmenter(weights, "cpu", SegmentOptions(encoder_backend="torch", **over), encoder=enc)
        before = enc.requested
        t = time.perf_counter()
        res = seg.segment(vol, show_bar=False)
        wall = time.perf_counter() - t
        ev = evaluate_case(res.labels, ref, vol.spacing.tolist(), case=Path(image).name)
        dice = {k: v["dice"] for k, v in ev["organs"].items() if not math.isnan(v["dice"])}
        rows.append({"row": name, "backend": backend, "options": over, "z_stride_used": res.options["z_stride_used"],
                     "encoded_slices": enc.requested - before,
                     "slices": int(vol.shape[2]), "dice": dice, "mean_dice": float(np.mean(list(dice.values()))),
                     "hd95_mm": {k: v["hd95_mm"] for k, v in ev["organs"].items()}, "wall_s_with_memo": wall})
    return {"case": str(image), "shape": list(vol.shape), "spacing": vol.spacing.tolist(), "rows": rows,
            "weights": weights, "threads": threads, "peak_rss_mb": peak_rss_mb()}
