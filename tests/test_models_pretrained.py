"""The real pretrained LiteMedSAM inside PriorSAM: encoder features and the binary box path.

One 256² slice through the TinyViT encoder (~3 s on CPU), shared by the tests in this file.
"""
from __future__ import annotations

import pytest
import torch

from priorsam.models import BinaryPromptPath, LiteImageEncoder, LoRALinear, PriorSAM

from models_helpers import random_bank

pytestmark = pytest.mark.slow


def disc_image(cy: float = 120.0, cx: float = 140.0, r: float = 45.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A bright disc on a dim, slightly textured background, min-max scaled to [0,1] like the upstream preprocessing."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    img = 0.2 + 0.02 * torch.randn(256, 256, generator=g)
    img[disc] = 0.85
    img = (img - img.min()) / (img.max() - img.min())
    return img.expand(1, 3, 256, 256).contiguous(), disc


@pytest.fixture(scope="module")
def encoded():
    enc = LiteImageEncoder(pretrained=True)
    image, disc = disc_image()
    with torch.no_grad():
        feats = enc(image)
    return enc, feats, disc


def test_pretrained_encoder_features(encoded):
    enc, feats, _ = encoded
    assert feats.embedding.shape == (1, 256, 64, 64)
    assert [tuple(s.shape) for s in feats.skips] == [(1, 128, 128, 128), (1, 160, 64, 64)]
    assert not feats.embedding.requires_grad and torch.isfinite(feats.embedding).all()
    # the wrapper reproduces the package's own TinyViT forward exactly
    image, _ = disc_image()
    with torch.no_grad():
        assert torch.allclose(enc.backbone(image), feats.embedding, atol=1e-5)
    assert not any(p.requires_grad for p in enc.parameters())


def test_binary_path_segments_the_boxed_disc(encoded):
    _, feats, disc = encoded
    path = BinaryPromptPath(pretrained=True)
    assert path.mask_input_size == (256, 256) and path.embedding_size == (64, 64)
    box = torch.tensor([[140.0 - 50, 120.0 - 50, 140.0 + 50, 120.0 + 50]])  # x0, y0, x1, y1
    with torch.no_grad():
        logits, iou = path(feats.embedding, box)
    assert logits.shape == (1, 1, 256, 256) and iou.shape == (1, 1)
    pred = logits[0, 0] > 0
    dice = 2 * (pred & disc).sum() / (pred.sum() + disc.sum())
    assert dice > 0.8, f"binary path Dice {dice:.3f} on a boxed bright disc"


def test_full_model_with_pretrained_parts_and_box(encoded):
    _, feats, disc = encoded
    torch.manual_seed(0)
    model = PriorSAM("lite", random_bank(9), pretrained=True)
    box = torch.tensor([[90.0, 70.0, 190.0, 170.0]])
    with torch.no_grad():
        out = model(features=feats, boxes=box)
    assert out["semantic_logits"].shape == (1, 9, 256, 256)
    assert out["prompted_class_logits"].shape == (1, 9)
    pred = out["binary_logits"][0, 0] > 0
    assert 2 * (pred & disc).sum() / (pred.sum() + disc.sum()) > 0.8
    sd = model.trainable_state_dict()
    assert not any(k.startswith(("encoder.", "binary.")) for k in sd)
    mb = sum(v.numel() * v.element_size() for v in sd.values()) / 2 ** 20
    assert mb < 25


def test_lora_adapts_a_private_copy(encoded):
    from priorsam.assets import load_litemedsam

    enc = LiteImageEncoder(pretrained=True, lora_rank=2)
    cached = load_litemedsam("cpu").image_encoder
    assert isinstance(enc.backbone.layers[1].blocks[0].attn.qkv, LoRALinear)
    assert isinstance(cached.layers[1].blocks[0].attn.qkv, torch.nn.Linear)
    assert enc.backbone is not cached


def test_moving_a_model_leaves_the_shared_litemedsam_where_it_was():
    # A model loaded for a GPU used to move the cached CPU instance with it (found on an H200): the next CPU
    # user in that process (the box predictor, the ONNX export) then met CUDA weights. .double() stands in
    # for .to("cuda") here: it moves parameters the same way.
    from priorsam.assets import load_litemedsam
    from priorsam.models.binary_path import BinaryPromptPath

    LiteImageEncoder(pretrained=True).double()
    BinaryPromptPath(pretrained=True).double()
    cached = load_litemedsam("cpu")
    assert {p.dtype for p in cached.parameters()} == {torch.float32}
