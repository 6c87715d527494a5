"""What the frozen binary path draws on the validation patient's liver when the box is right.

The validation patient (3 axial slices of a non-contrast CT from another scanner, manual liver) is
where issue 12's liver target (Dice ≥ 0.93) is read, and where the heads answer alone (3 mm of z is
too little for the 3D localiser). This script asks how much of the remaining gap a better box could
close: every slice is prompted with the box of the *reference* liver itself (no model chooses it),
grown by 0, 4.5 and 15 mm (0, 3 and 10 model pixels at 1.5 mm: the engine's margins around the
localiser's and the heads' boxes), through the pretrained LiteMedSAM prompt encoder and mask decoder
(`BinaryPromptPath`, frozen, as the engine runs it) in the shipped model's framing and in LiteMedSAM's
own (the box-prompt command's). The sample CT's liver, the texture every training image comes from, is
measured the same way for contrast.

Measurement only: nothing here chooses a parameter, and the validation patient must never be used to.

    python bench/validation_box_ceiling.py --out bench/results/validation_box_ceiling.json
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
from priorsam.evaluation.generalisation import DEFAULT_VALIDATION, _validation_case  # noqa: E402
from priorsam.evaluation.metrics import organ_metrics  # noqa: E402
from priorsam.data.samples import sample_ct  # noqa: E402
from priorsam.io import display_spacing, from_display, read_label_map, read_volume, to_display  # noqa: E402
from priorsam.models.binary_path import BinaryPromptPath  # noqa: E402
from priorsam.models.encoder_backend import cpu_encoder  # noqa: E402
from priorsam.models.refinement import mask_box  # noqa: E402
from priorsam.models.spec import read_checkpoint  # noqa: E402

LIVER = 5
MARGINS_MM = (0.0, 4.5, 15.0)


@torch.inference_mode()
def reference_box_masks(volume, liver_ras: np.ndarray, framing: Framing, margin_mm: float, encoder, binary,
                        slices: list[int] | None = None, embeddings: dict | None = None) -> np.ndarray:
    """Canonical-RAS bool mask: each chosen slice drawn by the binary path from the reference liver's box.

    ``embeddings``: a dict kept by the caller for one volume and framing; slices embedded once are reused for
    every margin (the embedding does not depend on the box)."""
    framed = FramedVolume.from_volume(volume, framing)
    frame = framed.frame
    gt = to_display(liver_ras)
    zs = [z for z in (slices if slices is not None else range(len(framed))) if gt[z].any()]
    out = np.zeros_like(gt, dtype=bool)
    row_mm, _ = display_spacing(volume)
    grow = np.array([-1, -1, 1, 1], dtype=np.float32) * margin_mm / row_mm
    embeddings = {} if embeddings is None else embeddings
    for start in range(0, len(zs), 4):
        batch = zs[start:start + 4]
        todo = [z for z in batch if z not in embeddings]
        if todo:
            embeddings.update(zip(todo, encoder(framed.images(np.array(todo))).embedding))
        emb = torch.stack([embeddings[z] for z in batch])
        boxes = [framed.box_to_model(mask_box(gt[z]) + grow) for z in batch]
        logits, _ = binary(emb, torch.as_tensor(np.stack(boxes)))
        if hasattr(frame, "labels_from_model"):      # the fixed frame: labels back as the engine maps them
            drawn = frame.labels_from_model((logits[:, 0] > 0).long()).numpy() > 0
        else:                                        # LiteMedSAM's frame: crop the pad, upsample the logits
            drawn = framed.maps_from_model(logits.float())[:, 0].numpy() > 0
        for z, d in zip(batch, drawn):
            out[z] = d
    return from_display(out)


def score(pred: np.ndarray, gt: np.ndarray, spacing, slices_mask: np.ndarray | None = None) -> dict:
    if slices_mask is not None:
        pred, gt = pred & slices_mask, gt & slices_mask
    m = organ_metrics(pred, gt, spacing)
    missed = float((gt & ~pred).sum() / gt.sum())
    extra = float((pred & ~gt).sum() / max(pred.sum(), 1))
    return {"dice": round(m["dice"], 4), "hd95_mm": round(m["hd95_mm"], 2),
            "missed_fraction": round(missed, 4), "extra_fraction": round(extra, 4)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--validation", default=str(DEFAULT_VALIDATION))
    ap.add_argument("--weights", default="bundle/models/model.pt", help="whose framing the engine's rows use")
    ap.add_argument("--sample-every", type=int, default=3, help="sample CT: every n-th liver slice")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    _, spec = read_checkpoint(args.weights)
    engine_framing = Framing(framing=spec.framing, spacing_mm=spec.spacing_mm, context=spec.context)
    framings = {"the shipped model's framing": engine_framing, "LiteMedSAM's own framing": Framing.upstream()}
    encoder = cpu_encoder("onnx", torch.device("cpu"))      # fp32, as docs/generalisation.md measures
    binary = BinaryPromptPath(pretrained=True).eval()

    vol, gt = _validation_case(Path(args.validation))
    s = sample_ct()
    svol = read_volume(s.image)
    sgt = read_label_map(s.label).array == LIVER
    liver_z = np.nonzero(to_display(sgt).any(axis=(1, 2)))[0]
    picked = [int(z) for z in liver_z[::args.sample_every]]
    picked_mask = np.zeros(to_display(sgt).shape, dtype=bool)
    picked_mask[picked] = True
    picked_mask = from_display(picked_mask)

    machine = machine_info(torch.get_num_threads())
    rows = []
    for fname, framing in framings.items():
        memo_val, memo_sample = {}, {}
        for margin in MARGINS_MM:
            t = time.time()
            pred = reference_box_masks(vol, gt, framing, margin, encoder, binary, embeddings=memo_val)
            rows.append({"case": "validation patient (3 slices)", "framing": fname, "margin_mm": margin,
                         **score(pred, gt, vol.spacing), "seconds": round(time.time() - t, 1)})
            print(rows[-1], flush=True)
            t = time.time()
            pred = reference_box_masks(svol, sgt, framing, margin, encoder, binary, picked, embeddings=memo_sample)
            rows.append({"case": f"sample CT ({len(picked)} liver slices, every {args.sample_every}th)",
                         "framing": fname, "margin_mm": margin, **score(pred, sgt, svol.spacing, picked_mask),
                         "seconds": round(time.time() - t, 1)})
            print(rows[-1], flush=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(["python", "bench/validation_box_ceiling.py"] + (argv or sys.argv[1:])),
                                          "machine": machine, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                                          "weights": args.weights, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
