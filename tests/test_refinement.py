"""Coarse-to-fine refinement with a localiser: which box each organ is prompted with, in which slices,
and who wins a pixel two organs claim. A stand-in box decoder returns its box's inside (logit = the
box's own confidence), so the tests see exactly which boxes went in."""
from __future__ import annotations

import math

import pytest
import torch

from priorsam.models.refinement import RefineOptions, box_iou, refine_to_labels

C = 9


class BoxInside:
    """Box prompt → logits: +strength inside the box, −10 outside (strength per call order)."""

    def __init__(self, strength: dict[tuple[int, int, int, int], float] | None = None):
        self.seen: list[list[float]] = []
        self.strength = strength or {}

    def __call__(self, embedding, boxes):
        n = len(boxes)
        ys = torch.arange(256).view(1, 256, 1)
        xs = torch.arange(256).view(1, 1, 256)
        b = boxes.view(n, 4, 1, 1)
        inside = (xs >= b[:, 0]) & (xs <= b[:, 2]) & (ys >= b[:, 1]) & (ys <= b[:, 3])
        s = torch.tensor([self.strength.get(tuple(int(v) for v in bx.tolist()), 5.0) for bx in boxes])
        self.seen += [bx.tolist() for bx in boxes]
        return torch.where(inside, s.view(n, 1, 1), torch.tensor(-10.0))[:, None], torch.ones(n, 1)


def heads_output(n: int, masks: dict[int, tuple[int, int, int, int]]):
    """Heads' logits where class k is confident inside its (x0, y0, x1, y1) box."""
    logits = torch.zeros(n, C, 256, 256)
    logits[:, 0] = 2.0
    for k, (x0, y0, x1, y1) in masks.items():
        logits[:, k, y0:y1 + 1, x0:x1 + 1] = 6.0
    return {"semantic_logits": logits, "presence_logits": torch.full((n, C), 5.0)}


def guides(n: int, boxes: dict[int, list[float]], prompt: dict[int, list[float]]):
    g = torch.full((n, C, 4), math.nan)
    p = torch.full((n, C, 4), math.nan)
    for k, b in boxes.items():
        g[:, k] = torch.tensor(b)
    for k, b in prompt.items():
        p[:, k] = torch.tensor(b)
    return g, p


def test_box_iou():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([1.0, 1 / 3]))
    assert box_iou(a[:1], torch.full((1, 4), math.nan)).item() == 0.0


@pytest.mark.parametrize("source", ["semantic", "localiser", "agree"])
def test_box_source_picks_the_prompt(source):
    # Liver (5): the heads draw 100..160, the localiser's mask says 90..150, its search box is wide.
    out = heads_output(1, {5: (100, 100, 160, 160)})
    guide, prompts = guides(1, {5: [60.0, 60.0, 200.0, 200.0]}, {5: [90.0, 90.0, 150.0, 150.0]})
    dec = BoxInside()
    o = RefineOptions(box_source=source, box_margin=2.0, localiser_box_margin=1.0)
    onehot = refine_to_labels(out, torch.zeros(1, 256, 64, 64), dec, guide, o, prompts)
    want = {"semantic": [98.0, 98.0, 162.0, 162.0], "localiser": [89.0, 89.0, 151.0, 151.0],
            # IoU of the heads' box and the localiser's is 0.6 ≥ 0.5: the heads' box is kept.
            "agree": [98.0, 98.0, 162.0, 162.0]}[source]
    assert dec.seen == [want]
    assert onehot[0, 5].sum() == (want[2] - want[0] + 1) ** 2


def test_without_a_localiser_the_heads_box_is_grown_by_the_heads_margin():
    out = heads_output(1, {5: (100, 100, 160, 160)})
    dec = BoxInside()
    refine_to_labels(out, torch.zeros(1, 256, 64, 64), dec, None, RefineOptions())
    assert dec.seen == [[90.0, 90.0, 170.0, 170.0]]                  # the default 10 px
    dec = BoxInside()
    refine_to_labels(out, torch.zeros(1, 256, 64, 64), dec, None, RefineOptions(box_margin=3.0))
    assert dec.seen == [[97.0, 97.0, 163.0, 163.0]]


def test_agree_falls_back_on_the_localiser_where_the_heads_disagree():
    out = heads_output(1, {5: (20, 20, 60, 60)})                       # the heads: somewhere else
    guide, prompts = guides(1, {5: [0.0, 0.0, 200.0, 200.0]}, {5: [90.0, 90.0, 150.0, 150.0]})
    dec = BoxInside()
    refine_to_labels(out, torch.zeros(1, 256, 64, 64), dec, guide, RefineOptions(box_source="agree",
                                                                                 localiser_box_margin=0.0), prompts)
    assert dec.seen == [[90.0, 90.0, 150.0, 150.0]]


def test_localiser_prompts_decide_the_slices_an_organ_is_in():
    # Slice 0: inside the search box but outside the localiser's mask → no prompt, no organ.
    out = heads_output(2, {5: (100, 100, 160, 160)})
    guide, prompts = guides(2, {5: [60.0, 60.0, 200.0, 200.0]}, {5: [90.0, 90.0, 150.0, 150.0]})
    prompts[0] = math.nan
    dec = BoxInside()
    onehot = refine_to_labels(out, torch.zeros(2, 256, 64, 64), dec, guide, RefineOptions(box_source="localiser"),
                              prompts)
    assert len(dec.seen) == 1 and onehot[0, 5].sum() == 0 and onehot[1, 5].sum() > 0


def test_conflicts_settled_by_heads_or_by_the_decoder():
    # Spleen (1) and stomach (6) prompts overlap on x 120..140; the heads prefer the spleen there,
    # the decoder is more certain of the stomach.
    out = heads_output(1, {1: (80, 100, 140, 160), 6: (120, 100, 200, 160)})
    out["semantic_logits"][:, 1, :, 120:141] = 8.0
    guide, prompts = guides(1, {1: [0.0, 0.0, 255.0, 255.0], 6: [0.0, 0.0, 255.0, 255.0]},
                            {1: [80.0, 100.0, 140.0, 160.0], 6: [120.0, 100.0, 200.0, 160.0]})
    dec = BoxInside({(80, 100, 140, 160): 1.0, (120, 100, 200, 160): 6.0})
    common = dict(box_source="localiser", localiser_box_margin=0.0)
    by_heads = refine_to_labels(out, torch.zeros(1, 256, 64, 64), dec, guide, RefineOptions(conflicts="semantic", **common),
                                prompts)
    by_decoder = refine_to_labels(out, torch.zeros(1, 256, 64, 64), dec, guide,
                                  RefineOptions(conflicts="binary", **common), prompts)
    assert by_heads[0, 1, 130, 130] == 1 and by_decoder[0, 6, 130, 130] == 1
    assert by_heads[0, 1, 130, 90] == 1 and by_decoder[0, 1, 130, 90] == 1     # unclaimed by the other: kept


def test_unknown_choices_are_refused():
    out = heads_output(1, {5: (100, 100, 160, 160)})
    with pytest.raises(ValueError, match="box_source"):
        refine_to_labels(out, torch.zeros(1, 256, 64, 64), BoxInside(), None, RefineOptions(box_source="x"))
    with pytest.raises(ValueError, match="conflicts"):
        refine_to_labels(out, torch.zeros(1, 256, 64, 64), BoxInside(), None, RefineOptions(conflicts="x"))


class Shrunk(BoxInside):
    """A decoder that under-draws: the inside of its box shrunk by ``by`` pixels on every side."""

    def __init__(self, by: int):
        super().__init__()
        self.by = by

    def __call__(self, embedding, boxes):
        return super().__call__(embedding, boxes + torch.tensor([1.0, 1.0, -1.0, -1.0]) * self.by)


def test_without_a_localiser_the_heads_probabilities_correct_the_decoder_where_they_are_sure():
    # Liver (5): the heads are sure over 100..160 (p 0.97) and sure it is not there elsewhere (p 0.07);
    # a spleen (1) blob of 9 pixels is under the heads' 12-pixel minimum, so it never prompts the decoder.
    out = heads_output(1, {5: (100, 100, 160, 160), 1: (10, 10, 12, 12)})
    emb = torch.zeros(1, 256, 64, 64)
    liver = torch.zeros(256, 256, dtype=torch.bool)
    liver[100:161, 100:161] = True

    # The decoder draws the whole 10 px-grown box: the veto takes back what the heads rule out.
    spill = refine_to_labels(out, emb, BoxInside(), None, RefineOptions())[0, 5].bool()
    assert spill.sum() == 81 ** 2
    vetoed = refine_to_labels(out, emb, BoxInside(), None, RefineOptions(heads_veto=0.1))[0, 5].bool()
    assert torch.equal(vetoed, liver)

    # A decoder 30 px short on every side of its box: the fill gives back what the heads are sure of,
    # and only for the organ the decoder drew (not the spleen blob, however sure the heads are of it).
    short = refine_to_labels(out, emb, Shrunk(30), None, RefineOptions())
    assert short[0, 5].sum() == 21 ** 2
    filled = refine_to_labels(out, emb, Shrunk(30), None, RefineOptions(heads_fill=0.5))
    assert torch.equal(filled[0, 5].bool(), liver) and filled[0, 1].sum() == 0

    # Where a localiser guides the slices its own probabilities correct the masks in 3D; these options do nothing.
    guide, prompts = guides(1, {5: [60.0, 60.0, 200.0, 200.0]}, {5: [90.0, 90.0, 170.0, 170.0]})
    guided = [refine_to_labels(out, emb, BoxInside(), guide, RefineOptions(box_source="localiser",
                                                                            localiser_box_margin=0.0, **extra),
                               prompts) for extra in ({}, {"heads_veto": 0.1, "heads_fill": 0.5})]
    assert torch.equal(guided[0], guided[1]) and guided[0][0, 5].sum() == 81 ** 2
