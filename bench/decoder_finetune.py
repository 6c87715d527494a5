"""Fine-tune LiteMedSAM's box decoder on the pseudo-patients, and measure it on anatomies it did not see.

The frozen box decoder draws every organ's final boundary end to end, and on the validation patient it stops
3–8 mm short of the liver's edge even from the reference box (bench/validation_box_ceiling.py). Would the
pseudo-patients teach it better edges, or only the sample CT's texture? This script measures that on the
feature cache the heads train on (fp16 embeddings of the frozen encoder, labels in the model frame):

* trains the mask decoder alone (the prompt encoder and the image encoder stay frozen) on the cache entries of
  every case except the nine dev anatomies with the library's trainer (:mod:`priorsam.training.box_decoder`),
  from box prompts as the engine gives them: each organ present in a slice, its label's box grown by a random
  margin and jittered per side, the box one pixel wider and taller than the engine's (``STOP54_EDGE_PX``, as
  the stop-54 run was made);
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine_info  # noqa: E402

from priorsam.evaluation.generalisation import DEFAULT_VALIDATION, MEASURE_OPTIONS, _validation_case  # noqa: E402
from priorsam.evaluation.metrics import organ_metrics  # noqa: E402
from priorsam.labels import labels  # noqa: E402
from priorsam.models.binary_path import BinaryPromptPath  # noqa: E402
from priorsam.training.box_decoder import (BoxDecoderTrainConfig, decode, is_excluded, label_boxes,  # noqa: E402
                                           make_optimizer, organ_pool, run_steps)
from priorsam.training.cache import FeatureCache  # noqa: E402

DEV = tuple(f"pseudo_btcv_{n}" for n in ("0001", "0004", "0008", "0022", "0026", "0029", "0033", "0036", "0040"))
EVAL_MARGINS_PX = (3.0, 10.0)
MIN_PIXELS = 20          # cross-sections under 20 model pixels (45 mm²) give Dice on a handful of pixels
STOP54_EDGE_PX = 1.0     # the stop-54 run's boxes ended one pixel past the engine's, right and bottom (kept, so
                         # its figures are reproduced; priorsam.training.box_decoder trains with the engine's)


def is_dev(case: str) -> bool:
    return is_excluded(case, DEV)


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


def organs_in(label: torch.Tensor, n_organs: int) -> list[int]:
    return [o for _, o in organ_pool([label], n_organs, MIN_PIXELS)]


def train(binary: BinaryPromptPath, entries, cfg: BoxDecoderTrainConfig, n_organs: int, log) -> list[dict]:
    """The library's decoder training (:func:`priorsam.training.box_decoder.run_steps`) on entries held in memory;
    the curve is each 25th step's own batch loss, as the stop-54 run logged it."""
    pool = organ_pool([lab for _, lab, _ in entries], n_organs, cfg.min_pixels)
    opt = make_optimizer(binary, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    rows, t0 = [], time.time()

    def on_step(step: int, loss: float) -> None:
        if step % 25 == 0 or step == cfg.steps:
            rows.append({"step": step, "loss": round(loss, 4), "seconds": round(time.time() - t0, 1)})
            log(f"step {step}/{cfg.steps} loss {loss:.4f} ({time.time() - t0:.0f} s)")

    run_steps(binary, entries, pool, opt, gen, cfg, 1, cfg.steps, on_step)
    binary.mask_decoder.eval()
    for p in binary.mask_decoder.parameters():
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
        base = label_boxes(refs, STOP54_EDGE_PX)
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


def decoder_state(path: str) -> dict:
    """A mask decoder's state dict from ``--save``'s file (tensors only, as stop 54 wrote it) or from the library
    trainer's ``box_decoder.pt`` (digest checked)."""
    from priorsam.models.spec import BOX_DECODER_SPEC_KEY, read_box_decoder_checkpoint

    state = torch.load(path, map_location="cpu", weights_only=True)
    return read_box_decoder_checkpoint(path)[0] if BOX_DECODER_SPEC_KEY in state else state


def measure_validation(decoder_path: str, validation: Path, weights: str) -> dict:
    """The validation patient's liver, end to end as docs/generalisation.md measures it and from the reference
    liver's box, with LiteMedSAM's decoder and with the fine-tuned one. Measurement only."""
    from priorsam.data.framed_volume import Framing
    from priorsam.assets import load_litemedsam
    from priorsam.engine.segment import SegmentOptions, Segmenter
    from priorsam.models.encoder_backend import cpu_encoder
    from priorsam.models.spec import read_checkpoint
    from validation_box_ceiling import MARGINS_MM, reference_box_masks, score

    tuned_state = decoder_state(decoder_path)
    vol, gt = _validation_case(validation)
    _, spec = read_checkpoint(weights)
    framing = Framing(framing=spec.framing, spacing_mm=spec.spacing_mm, context=spec.context)
    encoder = cpu_encoder("onnx", torch.device("cpu"))
    rows, memo = [], {}
    for name in ("frozen (LiteMedSAM)", "fine-tuned"):
        seg = Segmenter(weights, "cpu", SegmentOptions(**MEASURE_OPTIONS))
        seg.feature_memo = memo
        binary = BinaryPromptPath(pretrained=True).eval()
        # With the ONNX encoder the engine's refinement runs the model's own PyTorch box decoder (seg.binary None).
        # Set in both arms: since bundle 0.9.0 the checkpoint carries a fine-tuned decoder of its own.
        assert seg.binary is None
        state = tuned_state if name == "fine-tuned" else load_litemedsam("cpu").mask_decoder.state_dict()
        seg.model.binary.mask_decoder.load_state_dict(state)
        binary.mask_decoder.load_state_dict(state)
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
    # DECODER.pt: --save's file, or box_decoder.pt of python -m priorsam.training.box_decoder
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

        from priorsam.config_files import read_json
        from priorsam.evaluation.runs import run_weights
        from priorsam.models.spec import read_checkpoint

        runs_file = rest[rest.index("--runs") + 1] if "--runs" in rest else None
        for run in read_json(runs_file, "runs file") if runs_file else []:
            if read_checkpoint(run_weights(run))[1].box_decoder is not None:
                ap.error(f"{run_weights(run)} carries a box decoder of its own, which the engine loads over this one; "
                         "compose a checkpoint instead: compose_checkpoint(W, W, OUT, box_decoder_from=DECODER.pt)")
        # Every binary path copies the cached LiteMedSAM's decoder when it is built (the OpenVINO one is
        # compiled from that copy and cached under a digest of its weights), so replacing it here reaches all
        # checkpoints without a decoder of their own.
        load_litemedsam("cpu").mask_decoder.load_state_dict(decoder_state(args.holdout_with))
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
    cfg = BoxDecoderTrainConfig(cache=args.cache, out_dir="", steps=args.steps, lr=args.lr, batch_size=args.batch,
                                seed=args.seed, max_margin_px=args.max_margin, jitter_px=args.jitter,
                                box_edge_px=STOP54_EDGE_PX, min_pixels=MIN_PIXELS)
    curve = train(tuned, train_entries, cfg, len(names), log=lambda s: print(s, flush=True))
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
