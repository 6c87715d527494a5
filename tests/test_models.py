"""PriorSAM model components: shapes, text influence, weights round trip (no pretrained weights needed)."""
from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F

from priorsam.errors import AssetError, InputError
from priorsam.models import (EncoderFeatures, IterativeMaskOptimizer, LoRALinear, PriorAligner, PriorSAM,
                             PriorSAMLoss, ViTBImageEncoder, apply_lora, build_image_encoder)
from priorsam.models.losses import dice_ce_hard, dice_ce_soft, soft_targets
from priorsam.models.priorsam import tensor_to_str

from models_helpers import blob_labels, random_bank

C = 9


def heads(bank=None, **kw) -> PriorSAM:
    torch.manual_seed(0)
    return PriorSAM(None, bank or random_bank(C), binary_path=False, pretrained=False, **kw)


def random_features(b: int = 2, seed: int = 1) -> EncoderFeatures:
    g = torch.Generator().manual_seed(seed)
    return EncoderFeatures(torch.randn(b, 256, 64, 64, generator=g),
                           (torch.randn(b, 128, 128, 128, generator=g), torch.randn(b, 160, 64, 64, generator=g)))


def test_heads_output_shapes():
    model = heads(refine_rounds=2)
    out = model(features=random_features(2))
    assert out["semantic_logits"].shape == (2, C, 256, 256)
    assert len(out["round_logits"]) == 3 and len(out["round_low_res_logits"]) == 3
    assert all(r.shape == (2, C, 256, 256) for r in out["round_logits"])
    assert out["low_res_logits"].shape == (2, C, 64, 64)
    assert out["presence_logits"].shape == (2, C)
    assert out["guide"].shape == (2, C, 64, 64)
    assert out["prototypes"].shape == (2, C, 256)
    assert "binary_logits" not in out
    # the refiner starts near identity but is not a no-op
    assert not torch.equal(out["round_logits"][0], out["round_logits"][-1])


def test_zero_rounds_returns_origin():
    out = heads(refine_rounds=0)(features=random_features(1))
    assert len(out["round_logits"]) == 1 and out["semantic_logits"] is out["round_logits"][0]


def test_mask_optimizer_rounds():
    opt = IterativeMaskOptimizer(feat_dim=8, hidden=4, rounds=3)
    low, full, feats = torch.randn(2, 5, 16, 16), torch.randn(2, 5, 64, 64), torch.randn(2, 8, 16, 16)
    lows, fulls = opt(low, full, feats)
    assert len(lows) == len(fulls) == 4 and lows[0] is low and fulls[0] is full
    # each full-res round adds the upsampled low-res correction of the same round
    delta = lows[1] - lows[0]
    assert torch.allclose(fulls[1] - fulls[0], F.interpolate(delta, size=(64, 64), mode="bilinear"), atol=1e-5)


def test_text_priors_change_logits_and_get_gradients():
    model = heads()
    feats = random_features(2)
    out = model(features=feats)
    labels = blob_labels(2, 256, C)
    loss, _ = PriorSAMLoss()(out, labels)
    loss.backward()
    grad = model.aligner.text_proj[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0

    with torch.no_grad():
        ref = model(features=feats)["semantic_logits"]
        saved = model.text_embeddings.clone()
        model.text_embeddings.zero_()
        zeroed = model(features=feats)["semantic_logits"]
        model.text_embeddings.copy_(saved[torch.randperm(C, generator=torch.Generator().manual_seed(0))])
        shuffled = model(features=feats)["semantic_logits"]
    for other in (zeroed, shuffled):
        rel = (other - ref).abs().mean() / ref.abs().mean()
        assert rel > 1e-2, f"text priors barely change the logits (relative change {rel:.2e})"


def test_pooling_weights_depend_on_image():
    aligner = PriorAligner(num_classes=4, text_dim=384)
    bank = random_bank(4)
    img = torch.randn(2, 256, 8, 8)
    img[1] += 3 * torch.randn(256, 1, 1)
    _, weights = aligner.prototypes(bank.embeddings, bank.mask, img)
    assert weights.shape == (2, 4, bank.embeddings.shape[1])
    assert torch.all(weights[:, -1, -1] == 0)  # padding description never used
    assert not torch.allclose(weights[0], weights[1])


def test_text_ablation_model_runs_without_text():
    model = heads(use_text=False)
    out = model(features=random_features(1))
    assert out["semantic_logits"].shape == (1, C, 256, 256)
    assert not hasattr(model.aligner, "text_proj")


def test_embedding_of_other_size_is_resized():
    model = heads()
    f = random_features(1)
    small = EncoderFeatures(torch.randn(1, 256, 16, 16), (torch.randn(1, 128, 16, 16), torch.randn(1, 160, 16, 16)))
    assert model(features=small)["semantic_logits"].shape == (1, C, 256, 256)
    with pytest.raises(InputError):
        model(features=EncoderFeatures(f.embedding[:, :128], f.skips))
    with pytest.raises(InputError):
        model()


def test_loss_parts_and_fused_dice_ce_matches_monai():
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 32, 32)
    labels = torch.randint(0, 4, (2, 32, 32))
    labels[:, :8] = 0
    monai_hard = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, lambda_ce=0.2, lambda_dice=0.8)
    assert torch.allclose(dice_ce_hard(logits, labels, 0.2, 0.8), monai_hard(logits, labels[:, None]), atol=1e-5)
    soft = soft_targets(labels, 4, (8, 8))
    ref = F.adaptive_avg_pool2d(F.one_hot(labels, 4).permute(0, 3, 1, 2).float(), (8, 8))
    assert torch.allclose(soft, ref)
    monai_soft = DiceCELoss(softmax=True, batch=True, lambda_ce=0.2, lambda_dice=0.8)
    assert torch.allclose(dice_ce_soft(logits[..., :8, :8], soft, 0.2, 0.8), monai_soft(logits[..., :8, :8], soft),
                          atol=1e-5)

    model = heads()
    out = model(features=random_features(2))
    total, parts = PriorSAMLoss()(out, blob_labels(2, 256, C))
    assert set(parts) == {"full", "low", "presence", "contrast"}
    assert torch.isfinite(total)
    with pytest.raises(InputError):
        PriorSAMLoss()(out, blob_labels(2, 128, C))


def test_prompted_outputs_and_alignment_loss():
    torch.manual_seed(0)
    model = PriorSAM(None, random_bank(C), binary_path=True, pretrained=False, refine_rounds=1)
    boxes = torch.tensor([[40.0, 40.0, 120.0, 120.0], [10.0, 20.0, 200.0, 100.0]])
    out = model(features=random_features(2), boxes=boxes)
    assert out["binary_logits"].shape == (2, 1, 256, 256)
    assert out["binary_iou"].shape == (2, 1)
    assert out["prompted_class_logits"].shape == (2, C)
    total, parts = PriorSAMLoss()(out, blob_labels(2, 256, C), prompt_classes=torch.tensor([1, -1]))
    assert {"align", "prompt_class"} <= set(parts)
    total.backward()
    assert model.decoder.seg_head.layers[0].weight.grad.abs().sum() > 0
    with pytest.raises(InputError):
        model(features=random_features(2), boxes=boxes[:1])


def test_trainable_weights_round_trip_and_prior_mismatch(tmp_path):
    bank = random_bank(C)
    model = PriorSAM(None, bank, binary_path=True, pretrained=False)
    sd = model.trainable_state_dict()
    assert not any(k.startswith(("encoder.", "binary.")) for k in sd)
    assert tensor_to_str(sd["prior_version"]) == bank.version
    assert tensor_to_str(sd["prior_hash"]) == bank.embedding_sha256
    path = tmp_path / "heads.pt"
    torch.save(sd, path)
    assert path.stat().st_size < 25 * 1024 * 1024
    loaded = torch.load(path, weights_only=True)

    torch.manual_seed(123)
    other = PriorSAM(None, bank, binary_path=True, pretrained=False)
    feats = random_features(1)
    model.eval(), other.eval()
    with torch.no_grad():
        assert not torch.allclose(model(features=feats)["semantic_logits"], other(features=feats)["semantic_logits"])
        other.load_trainable_state_dict(loaded, bank)
        assert torch.equal(model(features=feats)["semantic_logits"], other(features=feats)["semantic_logits"])

    changed = copy.deepcopy(bank)
    changed.embedding_sha256 = "0" * 64
    with pytest.raises(AssetError, match="priors"):
        other.load_trainable_state_dict(loaded, changed)
    newer = copy.deepcopy(bank)
    newer.version = "v999"
    with pytest.raises(AssetError, match="v999"):
        other.load_trainable_state_dict(loaded, newer)
    bad = dict(loaded)
    bad.pop("decoder.hyper.layers.0.weight")
    with pytest.raises(AssetError, match="configuration"):
        other.load_trainable_state_dict(bad, bank)


def test_lora_linear_starts_as_identity_and_trains_only_adapters():
    base = torch.nn.Linear(6, 9)
    lora = LoRALinear(copy.deepcopy(base), rank=2)
    x = torch.randn(3, 6)
    assert torch.allclose(lora(x), base(x))
    lora(x).sum().backward()
    assert lora.lora_b.grad.abs().sum() > 0 and lora.base.weight.grad is None
    holder = torch.nn.Sequential(torch.nn.Module())
    holder[0].qkv = torch.nn.Linear(4, 12)
    assert apply_lora(holder, rank=1) == 1 and isinstance(holder[0].qkv, LoRALinear)


def test_lite_encoder_lora_trains_only_adapters():
    """LoRA on the random-init TinyViT: only adapters train; BatchNorm stays in eval mode."""
    enc = build_image_encoder("lite", pretrained=False, lora_rank=2)
    trainable = [n for n, p in enc.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(trainable) == 2 * 10  # 10 attention blocks in stages 1-3 (depths 2, 6, 2)
    enc.train()
    assert not enc.backbone.training
    assert enc.skip_channels == (128, 160)


@pytest.mark.parametrize("size", [224, 256, 512])
def test_vit_b_tiny_shapes(size):
    torch.manual_seed(0)
    enc = ViTBImageEncoder(img_size=size, pretrained=False, depth=2, embed_dim=32, num_heads=2,
                           global_attn_indexes=(0, 1), window_size=7)
    feats = enc(torch.rand(1, 3, size, size))
    g = size // 16
    assert feats.embedding.shape == (1, 256, g, g)
    assert [tuple(s.shape) for s in feats.skips] == [(1, 32, g, g)] * 2
    with pytest.raises(InputError):
        enc(torch.rand(1, 3, 128, 128))


def _fake_sam_checkpoint(path, depth=2, embed_dim=32, heads=2):
    """A SAM-style checkpoint (1024-px grid 64, keys image_encoder.*) for a tiny ViT, random weights."""
    from segment_anything.modeling import ImageEncoderViT

    torch.manual_seed(0)
    vit = ImageEncoderViT(img_size=1024, patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=heads,
                          use_rel_pos=True, window_size=7, global_attn_indexes=(1,), out_chans=256,
                          norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6))
    state = {f"image_encoder.{k}": v + 0.01 * torch.randn_like(v) for k, v in vit.state_dict().items()}
    state["mask_decoder.dummy"] = torch.zeros(1)
    torch.save(state, path)
    return state


@pytest.mark.parametrize("size", [224, 256, 512])
def test_vit_b_checkpoint_positional_embedding_resize(tmp_path, size):
    state = _fake_sam_checkpoint(tmp_path / "sam_vit_b_01ec64.pth")
    enc = ViTBImageEncoder(img_size=size, checkpoint=tmp_path / "sam_vit_b_01ec64.pth", depth=2, embed_dim=32,
                           num_heads=2, global_attn_indexes=(0, 1), window_size=7)
    g = size // 16
    pos = enc.backbone.pos_embed
    assert pos.shape == (1, g, g, 32)
    want = F.interpolate(state["image_encoder.pos_embed"].permute(0, 3, 1, 2), size=(g, g), mode="bicubic",
                         align_corners=False).permute(0, 2, 3, 1)
    assert torch.allclose(pos, want, atol=1e-6)
    # block 1 is global in both: its rel-pos table is resized from 2·64−1 to 2·g−1 rows
    assert enc.backbone.blocks[1].attn.rel_pos_h.shape == (2 * g - 1, 16)
    # block 0 is windowed (7) in the checkpoint but global here: its table is resized too
    assert enc.backbone.blocks[0].attn.rel_pos_w.shape == (2 * g - 1, 16)
    assert torch.equal(enc.backbone.patch_embed.proj.weight, state["image_encoder.patch_embed.proj.weight"])
    assert enc(torch.rand(1, 3, size, size)).embedding.shape == (1, 256, g, g)


def test_vit_b_missing_checkpoint_is_asset_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIORSAM_CACHE", str(tmp_path))
    monkeypatch.delenv("PRIORSAM_SAM_VIT_B", raising=False)
    with pytest.raises(AssetError, match="sam_vit_b_01ec64.pth"):
        build_image_encoder("vit_b")
    with pytest.raises(AssetError):
        ViTBImageEncoder(checkpoint=tmp_path / "nope.pth")


def test_priorsam_with_tiny_vit_encoder_end_to_end():
    torch.manual_seed(0)
    enc = ViTBImageEncoder(img_size=224, pretrained=False, depth=2, embed_dim=32, num_heads=2,
                           global_attn_indexes=(0, 1), window_size=7)
    model = PriorSAM(enc, random_bank(C), binary_path=False, pretrained=False)
    assert model.fusion.skip64.proj.in_channels == 32
    out = model(images=torch.rand(2, 3, 224, 224))
    assert out["semantic_logits"].shape == (2, C, 256, 256)
    # the frozen encoder is not in the trainable weights
    assert not any(k.startswith("encoder.") for k in model.trainable_state_dict())


def test_state_dict_is_tensors_only():
    sd = heads().trainable_state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    assert all(torch.is_tensor(v) for v in torch.load(buf, weights_only=True).values())
