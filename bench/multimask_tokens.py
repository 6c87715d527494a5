"""Which of the frozen box decoder's four output masks draws an organ best, given its right box?

SAM's mask decoder has four mask tokens: token 0 is the single mask (``multimask_output=False``, what
MedSAM and LiteMedSAM were fine-tuned on and what the engine reads); tokens 1–3 are SAM's "multimask"
answers (part / sub-part / whole), chosen in SAM by the IoU its head predicts. The validation patient's
liver is drawn 15 % short with the reference's own box (bench/validation_box_ceiling.py), so a
larger-mask token would be a lever that keeps the binary path. This script asks whether any token (or
SAM's rule of the highest predicted IoU) beats token 0 on the sample CT, every organ, each prompted with
the box of its reference mask grown by the engine's 3 model pixels around the localiser's mask. The
validation patient is not run: it must never choose a parameter.

    python bench/multimask_tokens.py --out bench/results/multimask_tokens.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine_info  # noqa: E402

from priorsam.data.framed_volume import FramedVolume, Framing  # noqa: E402
from priorsam.data.samples import sample_ct  # noqa: E402
from priorsam.io import read_label_map, read_volume, to_display  # noqa: E402
from priorsam.labels import labels  # noqa: E402
from priorsam.models.binary_path import BinaryPromptPath  # noqa: E402
from priorsam.models.encoder_backend import cpu_encoder  # noqa: E402
from priorsam.models.refinement import mask_box  # noqa: E402
from priorsam.models.spec import read_checkpoint  # noqa: E402

MARGIN_PX = 3.0
COLUMNS = ("token 0 (the engine's)", "token 1", "token 2", "token 3", "highest predicted IoU of 0-3",
           "highest predicted IoU of 1-3 (SAM's multimask rule)")


@torch.inference_mode()
def token_masks(binary: BinaryPromptPath, embedding: torch.Tensor, box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """embedding (1, 256, 64, 64), box (1, 4) model px → masks (4, 256, 256) bool (token 0, then 1–3) and
    their predicted IoU (4,)."""
    sparse, dense = binary.prompt_encoder(points=None, boxes=box, masks=None)
    # SAM's predict_masks computes all four tokens at once; forward only slices token 0 or tokens 1–3 out of it.
    masks, iou = binary.mask_decoder.predict_masks(image_embeddings=embedding,
                                                   image_pe=binary.prompt_encoder.get_dense_pe(),
                                                   sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
    return masks[0] > 0, iou[0]


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    return float(2 * (pred & ref).sum() / max(pred.sum() + ref.sum(), 1))


def scores_for(masks: torch.Tensor, iou: torch.Tensor, ref: np.ndarray) -> list[float]:
    """Dice of each token's mask against ``ref`` (model grid), then of the two IoU-chosen ones (COLUMNS)."""
    d = [dice(m.numpy(), ref) for m in masks]
    return d + [d[int(iou.argmax())], d[1 + int(iou[1:].argmax())]]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="bundle/models/model.pt", help="whose framing to run in")
    ap.add_argument("--every", type=int, default=4, help="every n-th slice that holds an organ")
    ap.add_argument("--min-pixels", type=int, default=20, help="organ cross-sections smaller than this are skipped")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    _, spec = read_checkpoint(args.weights)
    framing = Framing(framing=spec.framing, spacing_mm=spec.spacing_mm, context=spec.context)
    encoder = cpu_encoder("onnx", torch.device("cpu"))      # fp32, as docs/generalisation.md measures
    binary = BinaryPromptPath(pretrained=True).eval()
    s = sample_ct()
    framed = FramedVolume.from_volume(read_volume(s.image), framing)
    ref = to_display(read_label_map(s.label).array)
    names = {lab.id: lab.name for lab in labels()}
    zs = np.nonzero(ref.any(axis=(1, 2)))[0][::args.every]
    per_organ: dict[str, list[list[float]]] = {}
    t = time.time()
    for z in zs:
        embedding = encoder(framed.images(np.array([z]))).embedding
        for k in np.unique(ref[z]):
            organ = ref[z] == k
            if k == 0 or organ.sum() < args.min_pixels:
                continue
            box = framed.box_to_model(mask_box(organ)) + np.array([-1, -1, 1, 1]) * MARGIN_PX
            masks, iou = token_masks(binary, embedding, torch.as_tensor(box[None], dtype=torch.float32))
            target = framed.labels_to_model(organ[None].astype(np.uint8))[0].numpy() > 0
            per_organ.setdefault(names[int(k)], []).append(scores_for(masks, iou, target))
    rows = [{"organ": name, "cross_sections": len(v), **{c: round(float(x), 4) for c, x in zip(COLUMNS, np.mean(v, 0))}}
            for name, v in per_organ.items()]
    every = [x for v in per_organ.values() for x in v]
    rows.append({"organ": "all cross-sections", "cross_sections": len(every),
                 **{c: round(float(x), 4) for c, x in zip(COLUMNS, np.mean(every, 0))}})
    for r in rows:
        print(r, flush=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(["python", "bench/multimask_tokens.py"] + (argv or sys.argv[1:])),
                                          "machine": machine_info(torch.get_num_threads()),
                                          "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                          "seconds": round(time.time() - t, 1), "weights": args.weights,
                                          "slices": [int(z) for z in zs], "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
