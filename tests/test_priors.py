"""Prior-text versions: schema, hashes on load, tamper detection, class list as data, checkpoint pairing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from priorsam.errors import AssetError
from priorsam.priors.bank import (PriorBank, check_identity, embedding_hash, list_versions, load_prior_bank,
                                  prior_text_root)
from priorsam.cli.priors import PriorsCLI
from priorsam.priors.manifest import description_problems, read_descriptions, read_manifest, validate_schema

ROOT = prior_text_root()


@pytest.fixture()
def tmp_root(tmp_path: Path) -> Path:
    """A private copy of prior_text/ that tests may edit."""
    dst = tmp_path / "prior_text"
    shutil.copytree(ROOT, dst)
    return dst


@pytest.mark.parametrize("version", list_versions(ROOT))
def test_every_version_schema_hashes_and_content(version):
    man = read_manifest(ROOT / version)
    validate_schema(man)
    bank = load_prior_bank(version)
    assert bank.class_names == [c["name"] for c in man["classes"]]
    for cls, items in zip(man["classes"], bank.texts):
        assert description_problems(items, cls["mentions"]) == [], cls["name"]
    c, k, d = bank.embeddings.shape
    assert bank.embeddings.dtype == torch.float32 and bank.mask.dtype == torch.bool
    assert (c, k) == tuple(bank.mask.shape) and c == len(bank.class_names)
    norms = bank.embeddings.norm(dim=-1)
    assert torch.allclose(norms[bank.mask], torch.ones(int(bank.mask.sum())), atol=1e-4)
    assert torch.all(norms[~bank.mask] == 0)
    assert embedding_hash(bank.embeddings) == bank.embedding_sha256 == man["embeddings"]["embedding_sha256"]


def test_v1_matches_label_table():
    from priorsam.labels import labels

    bank = load_prior_bank("v1")
    assert bank.class_names[0] == "background" and bank.label_ids[0] == 0
    assert bank.class_names[1:] == [lab.name for lab in labels()]
    assert bank.label_ids[1:] == [lab.id for lab in labels()]
    assert all(len(t) >= 8 for t in bank.texts) and bank.dim == 384
    assert bank.encoder_id.startswith("sentence-transformers/all-MiniLM-L6-v2")


def test_edited_text_without_new_version_is_caught(tmp_root):
    f = tmp_root / "v1" / "liver.txt"
    f.write_text(f.read_text().replace("largest solid organ", "largest organ"))
    with pytest.raises(AssetError, match=r"liver\.txt was changed after release.*new version"):
        load_prior_bank("v1", tmp_root)
    with pytest.raises(AssetError, match="failed checks: v1"):
        PriorsCLI(str(tmp_root)).check()


def test_tampered_embeddings_are_caught(tmp_root):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    path = tmp_root / "v1" / "embeddings.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    tensors["embeddings"][1, 0, 0] += 1e-3
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(AssetError, match="embeddings of priors v1 were altered"):
        load_prior_bank("v1", tmp_root)


def test_embeddings_from_other_texts_are_caught(tmp_root):
    """A consistent re-hash of an edited text (manifest updated too) still mismatches the embeddings."""
    folder = tmp_root / "v1"
    f = folder / "spleen.txt"
    f.write_text(f.read_text() + "The spleen is an extra sentence added later to test the embeddings check.\n")
    man = json.loads((folder / "manifest.json").read_text())
    import hashlib

    man["classes"][1]["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(AssetError, match="computed from other texts"):
        load_prior_bank("v1", tmp_root)


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m.pop("classes"), "missing key 'classes'"),
    (lambda m: m.update(schema="other/9"), "schema"),
    (lambda m: m["classes"].reverse(), "first class must be background"),
    (lambda m: m["classes"][2].update(label_id=1), "duplicate label_id"),
    (lambda m: m["classes"][3].update(mentions=[]), "mentions"),
    (lambda m: m["classes"][3].update(file="../x.txt"), "plain name"),
    (lambda m: m["review"].pop("reviewed"), "reviewed"),
    (lambda m: m.update(version="v9"), "does not match folder"),
])
def test_schema_violations_are_one_line_errors(tmp_root, mutate, message):
    path = tmp_root / "v1" / "manifest.json"
    man = json.loads(path.read_text())
    mutate(man)
    path.write_text(json.dumps(man))
    with pytest.raises(AssetError, match=message) as err:
        load_prior_bank("v1", tmp_root)
    assert "\n" not in str(err.value)


def test_unknown_version_and_missing_embeddings(tmp_root):
    with pytest.raises(AssetError, match=r"prior version v7 not found .*available: v1"):
        load_prior_bank("v7", tmp_root)
    shutil.copytree(tmp_root / "v1", tmp_root / "v2")
    man = json.loads((tmp_root / "v2" / "manifest.json").read_text())
    man["version"] = "v2"
    del man["embeddings"]
    (tmp_root / "v2" / "manifest.json").write_text(json.dumps(man))
    (tmp_root / "v2" / "embeddings.safetensors").unlink()
    with pytest.raises(AssetError, match="run `priorsam priors embed --version v2`"):
        load_prior_bank("v2", tmp_root)


def test_class_list_is_data(tmp_root):
    """Dropping classes from a manifest (or adding files) changes the bank with no code change."""
    folder = tmp_root / "v1"
    man = json.loads((folder / "manifest.json").read_text())
    man["classes"] = [c for c in man["classes"] if c["name"] in ("background", "liver", "pancreas")]
    del man["embeddings"]
    (folder / "manifest.json").write_text(json.dumps(man))
    (folder / "embeddings.safetensors").unlink()
    # The vectors are v1's own rows for these classes, so no encoder run is needed here
    # (a full `embed` with MiniLM is exercised in test_priors_encoder.py).
    v1 = load_prior_bank("v1")
    keep = [v1.class_names.index(n) for n in ("background", "liver", "pancreas")]
    from priorsam.priors.bank import save_embeddings

    emb, mask = v1.embeddings[keep].clone(), v1.mask[keep].clone()
    digest = save_embeddings(folder, man, emb, mask, v1.encoder_id, "0" * 64)
    man["embeddings"] = {"file": "embeddings.safetensors", "encoder_id": v1.encoder_id, "encoder_sha256": "0" * 64,
                         "embedding_sha256": digest, "shape": list(emb.shape)}
    (folder / "manifest.json").write_text(json.dumps(man))
    bank = load_prior_bank("v1", tmp_root)
    assert bank.class_names == ["background", "liver", "pancreas"]
    assert bank.label_ids == [0, 5, 8]


def test_checkpoint_pairing():
    bank = load_prior_bank("v1")
    ident = bank.identity()
    check_identity(ident, bank)
    other = PriorBank(**{**bank.__dict__, "version": "v2", "embedding_sha256": "f" * 64})
    with pytest.raises(AssetError, match="trained with priors v1 .* but priors v2"):
        check_identity(ident, other)
    with pytest.raises(AssetError, match="does not record"):
        check_identity({}, bank)


def test_prior_text_root_env(monkeypatch, tmp_root):
    monkeypatch.setenv("PRIORSAM_PRIOR_TEXT", str(tmp_root))
    assert prior_text_root() == tmp_root
    assert load_prior_bank("v1").embedding_sha256 == load_prior_bank("v1", ROOT).embedding_sha256
    monkeypatch.setenv("PRIORSAM_PRIOR_TEXT", str(tmp_root / "nope"))
    with pytest.raises(AssetError, match="not a folder"):
        prior_text_root()


def test_description_problems_catch_bad_items():
    good = [f"The liver sentence number {i} has enough words in it." for i in range(8)]
    assert description_problems(good, ["liver"]) == []
    bad = good[:6] + ["", good[0], "The spleen alone is named in this one here.", "too short liver"]
    problems = " | ".join(description_problems(bad, ["liver"]))
    for expected in ("is empty", "duplicates item 1", "does not mention", "has 3 words"):
        assert expected in problems
    assert "need at least 8" in " | ".join(description_problems(good[:3], ["liver"]))
    # whole-word matching: "left kidney" must not be satisfied by text about the right one
    assert description_problems(["The right kidney lies below the liver on the right."], ["left kidney"], min_items=1)


def test_read_descriptions_ignores_blank_lines(tmp_path):
    f = tmp_path / "x.txt"
    f.write_text("  one line here  \n\n\ttwo\n")
    assert read_descriptions(f) == ["one line here", "two"]
