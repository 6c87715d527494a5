"""The issue's other localiser design, measured: a small 3D head over the frozen 2D encoder's slice features
stacked along z, against the shipped MONAI SegResNet localiser (bench/results/localiser_feature_head_decision.md).

    python bench/localiser_feature_head.py extract --bank BANK --out FEATS [--holdout]   # encoder features
    python bench/localiser_feature_head.py train --feats FEATS --out HEAD.pt [--minutes 10]
    python bench/localiser_feature_head.py evaluate --bank BANK --feats FEATS --head HEAD.pt --out ROWS.json

``extract`` renders pseudo-patients as ``anatomy_holdout`` does, frames every second axial slice as the engine
frames it and stores the LiteMedSAM encoder's image embedding, (256, 64, 64) per slice (6 mm cells in the
fixed 1.5 mm frame), in float16, with the organ labels in the same 64² cells: the 26 training anatomies in
native and one contrast phase each (arterial, portal-venous and delayed in turn), or with ``--holdout`` the
seven held-out anatomies in the evaluated settings. ``train`` fits :class:`FeatureHead` on the training
stacks (cross-entropy + soft Dice, z crops of 24 cells, batch 2) for a fixed wall-clock budget. ``evaluate``
scores its masks on each held-out volume's own grid (logits interpolated along z and in-plane, argmax, back
through the frame) next to the SegResNet localisers' masks on the same grid (``LocaliserResult.labels_on``)
and the reference itself passed through the head's 6 mm cells the same way (what a perfect head could score).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HOLDOUT = ["btcv_0005", "btcv_0010", "btcv_0024", "btcv_0031", "btcv_0037", "totalsegmentator_s0327", "amos_0013"]
EVAL_SETTINGS = ["native", "portal_venous", "unseen", "cta_crop"]
PHASES = ["arterial", "portal_venous", "delayed"]
Z_STEP = 2          # every second slice of the 3 mm pseudo-patients: 6 mm cells along z as in-plane
CROP_Z = 16         # 96 mm of z per training crop
CROP_XY = 48        # 288 mm in-plane per training crop (the frame is 64 cells, 384 mm)


class FeatureHead(nn.Module):
    """(B, 256, Z, 64, 64) stacked encoder embeddings → (B, 9, Z, 64, 64) organ logits.

    A 1×1×1 projection to ``width`` channels, then four residual blocks, each a 1×3×3 in-plane and a 3×1×1
    along-z convolution dilated 1, 2, 4, 8 (a receptive field of 31 cells, 186 mm, so an organ is placed among
    its neighbours; factorised because full 3×3×3 convolutions ran at 6 s a step on this CPU), with group norm."""

    def __init__(self, in_channels: int = 256, width: int = 24, num_classes: int = 9) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Conv3d(in_channels, width, 1), nn.GroupNorm(8, width), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv3d(width, width, (1, 3, 3), padding=(0, d, d), dilation=(1, d, d)),
                          nn.Conv3d(width, width, (3, 1, 1), padding=(d, 0, 0), dilation=(d, 1, 1)),
                          nn.GroupNorm(8, width), nn.ReLU())
            for d in (1, 2, 4, 8))
        self.out = nn.Conv3d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.project(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def _segmenter():
    from priorsam.engine.segment import SegmentOptions, Segmenter

    return Segmenter("bundle/models/model.pt", "cpu", SegmentOptions())


def stack(seg, vol, gt: np.ndarray | None):
    """One volume → (Z', 256, 64, 64) float16 embeddings of every ``Z_STEP``-th slice, their indices, and the
    labels (Z', 64, 64) uint8 in the same cells (None without ``gt``)."""
    from priorsam.data.framed_volume import FramedVolume
    from priorsam.io import to_display

    framed = FramedVolume.from_volume(vol, seg.framing())
    idx = np.arange(0, len(framed.slices), Z_STEP)
    feats = []
    for i in range(0, len(idx), 4):
        feats.append(seg.features(framed.images(idx[i:i + 4])).embedding.to(torch.float16).numpy())
    labels = None
    if gt is not None:
        lab = framed.labels_to_model(to_display(gt)[idx])                 # (Z', 256, 256) model space
        labels = lab[:, 2::4, 2::4].numpy().astype(np.uint8)              # the cell centres of the 64² grid
    return np.concatenate(feats), idx, labels


def extract(a) -> None:
    from priorsam.data.pseudo_patients import list_bank
    from priorsam.evaluation.anatomy_holdout import rendered

    seg = _segmenter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.holdout:
        plan = [(c, EVAL_SETTINGS) for c in HOLDOUT]
    else:
        train = [r["case_id"] for r in list_bank(a.bank) if r["case_id"] not in HOLDOUT]
        plan = [(c, ["native", PHASES[i % 3]]) for i, c in enumerate(train)]
    for cid, settings in plan:
        for _, setting, pp, crop, vol in rendered(a.bank, [cid], settings):
            path = out / f"{cid}_{setting}.npz"
            if path.is_file():
                continue
            t0 = time.time()
            feats, idx, labels = stack(seg, vol, np.ascontiguousarray(pp.ours[crop]))
            tmp = out / f"{cid}_{setting}.part.npz"
            np.savez(tmp, feats=feats, idx=idx, labels=labels)
            tmp.rename(path)
            print(f"[extract] {cid} {setting}: {len(idx)} slices, {time.time() - t0:.0f} s", flush=True)


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    ce = F.cross_entropy(logits, target)
    prob = logits.softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3).float()
    dims = (0, 2, 3, 4)
    inter, total = (prob * onehot).sum(dims), (prob + onehot).sum(dims)
    present = onehot.sum(dims) > 0
    dice = 1 - (2 * inter + 1) / (total + 1)
    return ce + dice[1:][present[1:]].mean() if present[1:].any() else ce


def train(a) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    files = sorted(Path(a.feats).glob("*.npz"))
    data = []
    for f in files:
        z = np.load(f)
        data.append((z["feats"], z["labels"]))
    print(f"[train] {len(data)} volumes, {sum(len(d[1]) for d in data)} slices", flush=True)
    head = FeatureHead()
    opt = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=1e-5)
    t_end = time.time() + 60 * a.minutes
    step, log = 0, []
    while time.time() < t_end:
        xs, ys = [], []
        for _ in range(2):
            feats, labels = data[rng.integers(len(data))]
            z0 = int(rng.integers(0, max(1, len(labels) - CROP_Z + 1)))
            r0, c0 = (int(v) for v in rng.integers(0, 64 - CROP_XY + 1, 2))
            cells = (slice(z0, z0 + CROP_Z), slice(None), slice(r0, r0 + CROP_XY), slice(c0, c0 + CROP_XY))
            x = torch.from_numpy(feats[cells].astype(np.float32)).permute(1, 0, 2, 3)   # (256, Z, 48, 48)
            y = torch.from_numpy(labels[cells[:1] + cells[2:]].astype(np.int64))
            pad = CROP_Z - y.shape[0]
            if pad:
                x, y = F.pad(x, (0, 0, 0, 0, 0, pad)), F.pad(y, (0, 0, 0, 0, 0, pad))
            xs.append(x)
            ys.append(y)
        loss = _loss(head(torch.stack(xs)), torch.stack(ys))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            value = float(loss.detach())
            log.append({"step": step, "loss": round(value, 4), "minutes": round((time.time() - t_end) / 60 + a.minutes, 2)})
            print(f"[train] step {step} loss {value:.4f}", flush=True)
    torch.save({"state_dict": head.state_dict(), "steps": step, "log": log}, a.out)
    print(f"[train] {step} steps in {a.minutes} min", flush=True)


@torch.inference_mode()
def head_labels(head: nn.Module, feats: np.ndarray, idx: np.ndarray, framed) -> np.ndarray:
    """The head's argmax on the volume's grid (X, Y, Z): logits interpolated along z to every slice, in-plane
    to the model frame, then back through the frame to the slice grid."""
    from priorsam.io import from_display

    x = torch.from_numpy(feats.astype(np.float32)).permute(1, 0, 2, 3)[None]
    logits = head(x)[0]                                                      # (9, Z', 64, 64)
    n = len(framed.slices)
    zs = np.clip(np.interp(np.arange(n), idx, np.arange(len(idx))), 0, len(idx) - 1)
    lo = np.floor(zs).astype(int)
    hi = np.minimum(lo + 1, len(idx) - 1)
    w = torch.from_numpy((zs - lo).astype(np.float32))[None, :, None, None]
    per_slice = (1 - w) * logits[:, lo] + w * logits[:, hi]                  # (9, Z, 64, 64)
    display = np.zeros(framed.slices.shape, np.uint8)
    for i in range(0, n, 8):
        up = F.interpolate(per_slice[:, i:i + 8].permute(1, 0, 2, 3), size=(256, 256), mode="bilinear",
                           align_corners=False)
        display[i:i + 8] = framed.maps_from_model(up).argmax(1).numpy().astype(np.uint8)
    return from_display(display)


CEILING = "the reference itself in the head's cells (its grid's ceiling)"


class _Cells(nn.Module):
    """Logits that are the reference labels in the head's cells: what a perfect head on that grid would draw."""

    def __init__(self, labels: np.ndarray) -> None:
        super().__init__()
        self.logits = F.one_hot(torch.from_numpy(labels.astype(np.int64)), 9).permute(3, 0, 1, 2).float()[None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits


def evaluate(a) -> None:
    from priorsam.data.framed_volume import FramedVolume
    from priorsam.engine.segment import SegmentOptions, Segmenter
    from priorsam.evaluation.anatomy_holdout import _scores, rendered
    from priorsam.evaluation.runs import run_weights

    ckpt = torch.load(a.head, map_location="cpu")
    head = FeatureHead()
    head.load_state_dict(ckpt["state_dict"])
    head.eval()
    refs = {"SegResNet localiser, bundle 0.8.0": _segmenter()}
    refs["SegResNet localiser, bundle 0.4.2 (first stage)"] = Segmenter(
        run_weights({"weights": "git:3dc338d:bundle/models/model.pt"}), "cpu", SegmentOptions())
    name = f"3D head over the encoder's features ({ckpt['steps']} steps)"
    rows = []
    for cid, setting, pp, crop, vol in rendered(a.bank, HOLDOUT, EVAL_SETTINGS):
        gt, support = np.ascontiguousarray(pp.ours[crop]), np.ascontiguousarray(pp.supported()[crop])
        z = np.load(Path(a.feats) / f"{cid}_{setting}.npz")
        seg = refs["SegResNet localiser, bundle 0.8.0"]
        framed = FramedVolume.from_volume(vol, seg.framing())
        answers = {name: head_labels(head, z["feats"], z["idx"], framed),
                   CEILING: head_labels(_Cells(z["labels"]), z["feats"], z["idx"], framed)}
        for ref, rseg in refs.items():
            loc = rseg.localise(vol, shifts=4 if setting == "cta_crop" else 1)
            answers[ref] = loc.labels_on(vol.shape, "linear") if loc.usable else np.zeros_like(gt)
        for run, labels in answers.items():
            row = {**_scores(labels, gt, support, pp.spacing, cid), "run": run, "case": cid, "setting": setting}
            rows.append(row)
            mean = float(np.nanmean([v["dice"] for v in row["organs"].values()]))
            print(f"[evaluate] {run} {cid} {setting}: mean Dice {mean:.3f}", flush=True)
        Path(a.out).write_text(json.dumps({"cases": HOLDOUT, "settings": EVAL_SETTINGS,
                                           "runs": [{"name": n} for n in answers], "rows": rows}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract")
    e.add_argument("--bank", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--holdout", action="store_true")
    t = sub.add_parser("train")
    t.add_argument("--feats", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--minutes", type=float, default=10.0)
    v = sub.add_parser("evaluate")
    v.add_argument("--bank", required=True)
    v.add_argument("--feats", required=True)
    v.add_argument("--head", required=True)
    v.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    {"extract": extract, "train": train, "evaluate": evaluate}[a.cmd](a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
