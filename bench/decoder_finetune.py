"""Fine-tune LiteMedSAM's box decoder on the pseudo-patients, and measure it on anatomies it did not see.

The frozen box decoder draws every organ's final boundary end to end, and on the validation patient it stops
3–8 mm short of the liver's edge even from the reference box (bench/validation_box_ceiling.py). Would the
pseudo-patients teach it better edges, or only the sample CT's texture? This script measures that on the
feature cache the heads train on (fp16 embeddings of the frozen encoder, labels in the model frame):

* trains the mask decoder alone (the prompt encoder and the image encoder stay frozen) on the cache entries of
  every case except the nine dev anatomies, from box prompts as the engine gives them: each organ present in a
  slice, its label's box grown by a random margin and jittered per side (see :func:`label_boxes` for the one
  pixel in which its boxes differ from the engine's);
* prompts every organ cross-section of the dev anatomies with the reference box grown by 3 px (the engine's
  margin around the localiser's mask) and 10 px (around the heads' masks), frozen and fine-tuned, and reports
  Dice per organ in the model frame.

The rule this was judged by is in bench/results/decoder_finetune_decision.md (written before it ran). The dev
pseudo-patients share the sample CT's texture, so a gain here can be texture fitting; the validation patient is
measured separately (``--validation-from``), never used to choose anything.

    python bench/decoder_finetune.py --cache CACHE --out bench/results/decoder_finetune.json --save DECODER.pt
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine_info  # noqa: E402

from priorsam.evaluation.generalisation import DEFAULT_VALIDATION, MEASURE_OPTIONS, _validation_case  # noqa: E402
from priorsam.evaluation.metrics import organ_metrics  # noqa: E402
from priorsam.labels import labels  # noqa: E402
from priorsam.models.binary_path import BinaryPromptPath  # noqa: E402
from priorsam.models.refinement import boxes_from_masks  # noqa: E402
from priorsam.training.cache import FeatureCache  # noqa: E402

DEV = tuple(f"pseudo_btcv_{n}" for n in ("0001", "0004", "0008", "0022", "0026", "0029", "0033", "0036", "0040"))
EVAL_MARGINS_PX = (3.0, 10.0)
MIN_PIXELS = 20          # cross-sections under 20 model pixels (45 mm²) give Dice on a handful of pixels


def is_dev(case: str) -> bool:
    return any(case == d or case.startswith(d + "_") for d in DEV)


def load_entries(cache: FeatureCache, records: list[dict]) -> list[tuple[torch.Tensor, torch.Tensor, dict]]:
    """(embedding fp16 (256, 64, 64), label uint8 (256, 256), record) per record; only those two tensors are read."""
    out = []
    for r in records:
        blob = torch.load(cache.path(r["key"]), map_location="cpu", weights_only=True, mmap=True)
        out.append((blob["embedding"].clone(), blob["label"].clone(), r))
    return out


def is_dev_plain(record: dict) -> bool:
    """An unaugmented slice of a dev anatomy itself (not of its arms-and-table copy): the primary measurement."""
    return record["case"] in DEV and record["view"] == 0


def label_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(K, H, W) non-empty masks → (K, 4) boxes. Unlike the engine's :func:`boxes_from_masks`, the right and
    bottom edges lie one pixel past the last mask pixel (the runs in bench/results were made this way)."""
    return boxes_from_masks(masks)[0] + torch.tensor([0.0, 0.0, 1.0, 1.0])


def decode(binary: BinaryPromptPath, embedding: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """embedding (256, 64, 64), boxes (K, 4) model px → logits (K, 256, 256): K prompts on one image."""
    sparse, dense = binary.prompt_encoder(points=None, boxes=boxes, masks=None)
    logits, _ = binary.mask_decoder(image_embeddings=embedding[None].float(), image_pe=binary.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=False)
    return logits[:, 0]


def organs_in(label: torch.Tensor, n_organs: int) -> list[int]:
    counts = torch.bincount(label.flatten().long(), minlength=n_organs + 1)
    return [o for o in range(1, n_organs + 1) if counts[o] >= MIN_PIXELS]


def train(binary: BinaryPromptPath, entries, steps: int, lr: float, batch: int, seed: int, n_organs: int,
          max_margin: float, jitter: float, log) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    pool = [(i, o) for i, (_, lab, _) in enumerate(entries) for o in organs_in(lab, n_organs)]
    params = [p for p in binary.mask_decoder.parameters()]
    for p in params:
        p.requires_grad_(True)
    binary.mask_decoder.train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    rows, t0 = [], time.time()
    for step in range(1, steps + 1):
        picks = torch.randint(len(pool), (batch,), generator=gen).tolist()
        by_entry: dict[int, list[int]] = {}
        for k in picks:
            i, o = pool[k]
            by_entry.setdefault(i, []).append(o)
        loss_sum = 0.0
        opt.zero_grad()
        for i, organs in by_entry.items():
            emb, lab, _ = entries[i]
            targets = torch.stack([(lab == o).float() for o in organs])
            boxes = label_boxes(targets.bool())
            grow = torch.rand(len(organs), 1, generator=gen) * max_margin
            shake = (torch.rand(len(organs), 4, generator=gen) * 2 - 1) * jitter
            boxes = (boxes + torch.tensor([-1.0, -1.0, 1.0, 1.0]) * grow + shake).clamp(0, 256)
            logits = decode(binary, emb, boxes)
            prob = logits.sigmoid()
            soft_dice = 1 - (2 * (prob * targets).sum((1, 2)) + 1) / (prob.sum((1, 2)) + targets.sum((1, 2)) + 1)
            loss = (F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean((1, 2)) + soft_dice).sum() / batch
            loss.backward()
            loss_sum += loss.item()
        opt.step()
        if step % 25 == 0 or step == steps:
            rows.append({"step": step, "loss": round(loss_sum, 4), "seconds": round(time.time() - t0, 1)})
            log(f"step {step}/{steps} loss {loss_sum:.4f} ({time.time() - t0:.0f} s)")
    binary.mask_decoder.eval()
    for p in params:
        p.requires_grad_(False)
    return rows


@torch.inference_mode()
def evaluate(models: dict[str, BinaryPromptPath], entries, n_organs: int) -> dict:
    """{model: {margin: {organ: [dice per cross-section]}}} with the same boxes for every model."""
    out = {m: {str(g): {o: [] for o in range(1, n_organs + 1)} for g in EVAL_MARGINS_PX} for m in models}
    for emb, lab, _ in entries:
        organs = organs_in(lab, n_organs)
        if not organs:
            continue
        refs = torch.stack([lab == o for o in organs])
        base = label_boxes(refs)
        for g in EVAL_MARGINS_PX:
            boxes = (base + torch.tensor([-1.0, -1.0, 1.0, 1.0]) * g).clamp(0, 256)
            for name, binary in models.items():
                drawn = decode(binary, emb, boxes) > 0
                inter = (drawn & refs).sum((1, 2)).float()
                d = (2 * inter / (drawn.sum((1, 2)) + refs.sum((1, 2))).clamp(min=1)).tolist()
                for o, v in zip(organs, d):
                    out[name][str(g)][o].append(v)
    return out


def summarise(scores: dict, names: list[str]) -> dict:
    table = {}
    for model, by_margin in scores.items():
        table[model] = {}
        for g, by_organ in by_margin.items():
            per = {names[o - 1]: round(float(np.mean(v)), 4) for o, v in by_organ.items() if v}
            table[model][g] = {"per_organ": per, "mean_over_organs": round(float(np.mean(list(per.values()))), 4),
                               "cross_sections": sum(len(v) for v in by_organ.values())}
    return table


def measure_validation(decoder_path: str, validation: Path, weights: str) -> dict:
    """The validation patient's liver, end to end as docs/generalisation.md measures it and from the reference
    liver's box, with LiteMedSAM's decoder and with the fine-tuned one. Measurement only."""
    from priorsam.data.framed_volume import Framing
    from priorsam.engine.segment import SegmentOptions, Segmenter
    from priorsam.models.encoder_backend import cpu_encoder
    from priorsam.models.spec import read_checkpoint
    from validation_box_ceiling import MARGINS_MM, reference_box_masks, score

    tuned_state = torch.load(decoder_path, map_location="cpu", weights_only=True)
    vol, gt = _validation_case(validation)
    _, spec = read_checkpoint(weights)
    framing = Framing(framing=spec.framing, spacing_mm=spec.spacing_mm, context=spec.context)
    encoder = cpu_encoder("onnx", torch.device("cpu"))
    rows, memo = [], {}
    for name in ("frozen (LiteMedSAM)", "fine-tuned"):
        seg = Segmenter(weights, "cpu", SegmentOptions(**MEASURE_OPTIONS))
        seg.feature_memo = memo
        binary = BinaryPromptPath(pretrained=True).eval()
        if name == "fine-tuned":
            # With the ONNX encoder the engine's refinement runs the model's own PyTorch box decoder (seg.binary None).
            assert seg.binary is None
            seg.model.binary.mask_decoder.load_state_dict(tuned_state)
            binary.mask_decoder.load_state_dict(tuned_state)
        t = time.time()
        pred = seg.segment(vol, show_bar=False).labels == 5
        m = organ_metrics(pred, gt, vol.spacing)
        rows.append({"decoder": name, "prompt": "engine end to end (heads' boxes, 3 slices)",
                     "dice": round(m["dice"], 4), "hd95_mm": round(m["hd95_mm"], 2), "seconds": round(time.time() - t, 1)})
        embeddings: dict = {}
        for margin in MARGINS_MM:
            pred = reference_box_masks(vol, gt, framing, margin, encoder, binary, embeddings=embeddings)
            rows.append({"decoder": name, "prompt": f"reference liver box + {margin} mm", **score(pred, gt, vol.spacing)})
    return {"validation": str(validation), "weights": weights, "decoder": decoder_path, "rows": rows}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", help="a feature cache filled by priorsam.training.build_cache (training)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--batch", type=int, default=8, help="box prompts per step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-margin", type=float, default=12.0, help="training boxes grown by 0..this many model px")
    ap.add_argument("--jitter", type=float, default=2.0, help="each side of a training box moved by up to this")
    ap.add_argument("--plain-every", type=int, default=2,
                    help="score every n-th unaugmented dev entry (neighbouring slices are near duplicates)")
    ap.add_argument("--augmented-every", type=int, default=6, help="score every n-th augmented dev entry")
    ap.add_argument("--out", required=True, help="results JSON (with --holdout-with: anatomy_holdout's prefix)")
    ap.add_argument("--save", help="write the fine-tuned mask decoder's state dict here")
    ap.add_argument("--validation-from", metavar="DECODER.pt",
                    help="instead of training: measure the validation patient with this fine-tuned decoder")
    ap.add_argument("--validation", default=str(DEFAULT_VALIDATION))
    ap.add_argument("--weights", default="bundle/models/model.pt")
    ap.add_argument("--holdout-with", metavar="DECODER.pt",
                    help="instead of training: run priorsam.evaluation.anatomy_holdout (the arguments after --) "
                         "with this decoder in place of LiteMedSAM's, in every model the engine builds")
    args, rest = ap.parse_known_args(argv)
    command = " ".join(["python", "bench/decoder_finetune.py"] + (argv or sys.argv[1:]))
    if args.holdout_with:
        from priorsam.assets import load_litemedsam
        from priorsam.evaluation import anatomy_holdout

        # Every binary path copies the cached LiteMedSAM's decoder when it is built (the OpenVINO one is
        # compiled from that copy and cached under a digest of its weights), so replacing it here reaches all.
        load_litemedsam("cpu").mask_decoder.load_state_dict(torch.load(args.holdout_with, map_location="cpu",
                                                                       weights_only=True))
        raise SystemExit(anatomy_holdout.main([a for a in rest if a != "--"] + ["--out", args.out]))
    if rest:
        ap.error(f"unrecognised arguments: {' '.join(rest)}")
    if not args.validation_from and not args.cache:
        ap.error("--cache is needed to train")
    if args.validation_from:
        result = measure_validation(args.validation_from, Path(args.validation), args.weights)
        result["command"] = command
        result["machine"] = machine_info(torch.get_num_threads())
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        for r in result["rows"]:
            print(r)
        return

    torch.manual_seed(args.seed)
    names = [lab.name for lab in labels()]
    cache = FeatureCache(args.cache)
    records = cache.records()
    train_recs = [r for r in records if not is_dev(r["case"])]
    dev_plain = [r for r in records if is_dev_plain(r)][::args.plain_every]
    dev_aug = [r for r in records if is_dev(r["case"]) and not is_dev_plain(r)][::args.augmented_every]
    t = time.time()
    train_entries = load_entries(cache, train_recs)
    dev_entries = load_entries(cache, dev_plain)
    aug_entries = load_entries(cache, dev_aug)
    print(f"loaded {len(train_entries)} training, {len(dev_entries)} + {len(aug_entries)} dev entries "
          f"in {time.time() - t:.0f} s", flush=True)

    frozen = BinaryPromptPath(pretrained=True).eval()
    tuned = BinaryPromptPath(pretrained=True)
    t = time.time()
    curve = train(tuned, train_entries, args.steps, args.lr, args.batch, args.seed, len(names),
                  args.max_margin, args.jitter, log=lambda s: print(s, flush=True))
    train_s = time.time() - t
    if args.save:
        torch.save(tuned.mask_decoder.state_dict(), args.save)

    models = {"frozen (LiteMedSAM)": frozen, "fine-tuned": tuned}
    t = time.time()
    plain = summarise(evaluate(models, dev_entries, len(names)), names)
    aug = summarise(evaluate(models, aug_entries, len(names)), names)
    eval_s = time.time() - t
    result = {"command": command,
              "machine": machine_info(torch.get_num_threads()),
              "dev_anatomies": list(DEV), "training_cases": sorted({r["case"] for r in train_recs}),
              "training_entries": len(train_entries), "train_seconds": round(train_s, 1),
              "eval_seconds": round(eval_s, 1), "curve": curve,
              "dev_unaugmented": plain, "dev_augmented_views": aug}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for title, table in (("dev, unaugmented", plain), ("dev, augmented views", aug)):
        for g in map(str, EVAL_MARGINS_PX):
            print(f"{title}, margin {g} px:")
            for model, by_margin in table.items():
                print(f"  {model:20s} mean {by_margin[g]['mean_over_organs']:.4f}  {by_margin[g]['per_organ']}")


if __name__ == "__main__":
    main()
