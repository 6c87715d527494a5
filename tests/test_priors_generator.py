"""`priorsam priors generate` with real tiny transformers models built offline from configs.

Two kinds of model, both run through the real ``generate()`` path (tokenise → greedy
``model.generate`` → decode → parse → validate → write):

* a randomly initialised GPT-2: writes gibberish, which validation must reject;
* a one-layer Llama whose weights are set by hand so that greedy decoding walks a fixed
  token chain per class (embedding = identity, attention and MLP outputs zeroed, lm_head
  maps token i to its successor). Its output is therefore known exactly, and the test
  controls whether it is valid.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from priorsam.errors import AssetError
from priorsam.priors.bank import load_prior_bank, prior_text_root
from priorsam.cli.priors import PriorsCLI
from priorsam.priors.generator import PriorValidationError, generate_version, parse_items
from priorsam.priors.manifest import read_descriptions, read_manifest

KEEP = ("background", "spleen", "liver")
# The test template ends with the class name, so the last prompt token (a per-class anchor) starts that class's chain.
TEMPLATE = "Write {n} descriptions of the {display} for axial CT. {focus}\nAnswer for {name}:"
SPECIALS = {"<pad>": 0, "<unk>": 1, "<eos>": 2}


@pytest.fixture()
def src_root(tmp_path: Path) -> Path:
    """prior_text copy whose v1 lists three classes, plus a test prompt template under prompts/."""
    root = tmp_path / "prior_text"
    shutil.copytree(prior_text_root(), root)
    man = read_manifest(root / "v1")
    man["classes"] = [c for c in man["classes"] if c["name"] in KEEP]
    (root / "v1" / "manifest.json").write_text(json.dumps(man))
    (root / "prompts" / "test_template.txt").write_text(TEMPLATE)
    return root


def _tokenizer(vocab: dict[str, int]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Each emitted token is unique ("▁word⟨k⟩"); decoding strips the ⟨k⟩ tag and turns ▁ / ⏎ into space / newline.
    tok.decoder = decoders.Sequence([decoders.Replace(Regex(r"⟨\d+⟩"), ""), decoders.Replace("▁", " "),
                                     decoders.Replace("⏎", "\n")])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


def build_chain_lm(folder: Path, scripts: dict[str, list[str]]) -> Path:
    """Save a Llama + tokenizer whose greedy output after "…{name}:" is exactly ``scripts[name]`` (one item per line)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = dict(SPECIALS)
    succ: dict[int, int] = {}
    k = 0
    for name, items in scripts.items():
        anchor = vocab.setdefault(f"{name}:", len(vocab))
        prev = anchor
        units = [w for i, item in enumerate(items) for w in (["⏎"] if i else []) + [f"▁{x}" for x in item.split()]]
        for unit in units:
            vocab[f"{unit}⟨{k}⟩"] = tid = len(vocab)
            k += 1
            succ[prev], prev = tid, tid
        succ[prev] = SPECIALS["<eos>"]
    size = len(vocab) + len(vocab) % 2  # even width for rotary embeddings
    cfg = LlamaConfig(vocab_size=size, hidden_size=size, intermediate_size=4, num_hidden_layers=1,
                      num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=2048,
                      tie_word_embeddings=False, rms_norm_eps=1e-6, bos_token_id=None,
                      eos_token_id=SPECIALS["<eos>"], pad_token_id=SPECIALS["<pad>"])
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(size))
        model.model.norm.weight.fill_(1.0)
        for layer in model.model.layers:
            layer.input_layernorm.weight.fill_(1.0)
            layer.post_attention_layernorm.weight.fill_(1.0)
        head = model.lm_head.weight  # (V, V): logits = head @ rmsnorm(onehot(i)) ∝ head[:, i]
        for i in range(size):
            head[succ.get(i, SPECIALS["<eos>"]), i] = 1.0
    model.save_pretrained(folder)
    _tokenizer(vocab).save_pretrained(folder)
    return folder


def build_random_gpt2(folder: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    # vocabulary: the words of v1's liver descriptions plus a few newlines, so the gibberish is made of real words
    words = sorted(set((prior_text_root() / "v1" / "liver.txt").read_text().split()))
    vocab = dict(SPECIALS)
    for i, w in enumerate(words + ["⏎"] * 8):
        vocab[f"▁{w}⟨{i}⟩" if w != "⏎" else f"⏎⟨{i}⟩"] = len(vocab)
    torch.manual_seed(0)
    # untied head and a wide init: a tied random GPT-2 just echoes its last input token
    cfg = GPT2Config(vocab_size=len(vocab), n_positions=512, n_embd=32, n_layer=2, n_head=2, tie_word_embeddings=False,
                     initializer_range=0.5,
                     eos_token_id=SPECIALS["<eos>"], bos_token_id=SPECIALS["<eos>"], pad_token_id=SPECIALS["<pad>"])
    GPT2LMHeadModel(cfg).save_pretrained(folder)
    _tokenizer(vocab).save_pretrained(folder)
    return folder


def good_scripts(n: int = 8) -> dict[str, list[str]]:
    return {
        "background": [f"Background case {i}: bowel loops, fat and muscle surround the organs on slice {i}." for i in range(n)],
        "spleen": [f"Spleen fact {i}: the spleen lies in the left upper quadrant near rib {i}." for i in range(n)],
        "liver": [f"Liver fact {i}: the liver fills the right upper quadrant on slice {i}." for i in range(n)],
    }


def _no_temp_left(root: Path) -> bool:
    return not any(p.name.startswith(".") for p in root.iterdir())


def test_parse_items_strips_list_markers():
    assert parse_items("1. The liver a\n\n- The liver b\n  3) The liver c \n• d\nplain") == [
        "The liver a", "The liver b", "The liver c", "d", "plain"]


def test_random_model_output_is_rejected(tmp_path, src_root):
    lm = build_random_gpt2(tmp_path / "gpt2")
    with pytest.raises(PriorValidationError, match=r"descriptions for 'background' rejected, nothing written: .*output began: '\w"):
        generate_version(lm, "v2", root=src_root, template=src_root / "prompts" / "test_template.txt",
                         max_new_tokens=60, log=lambda _: None)
    assert not (src_root / "v2").exists() and _no_temp_left(src_root)


@pytest.mark.parametrize("spoil, message", [
    (lambda s: s["spleen"].__setitem__(3, s["spleen"][2]), "'spleen' rejected.*item 4 duplicates item 3"),
    (lambda s: s["liver"].__setitem__(0, "Fact zero: this line names no organ at all, sadly."), "'liver' rejected.*item 1 does not mention"),
    (lambda s: s["liver"].pop(), "'liver' rejected.*7 descriptions, need at least 8"),
    (lambda s: s["spleen"].__setitem__(5, "spleen"), "'spleen' rejected.*item 6 has 1 words"),
])
def test_controlled_bad_output_is_rejected(tmp_path, src_root, spoil, message):
    scripts = good_scripts()
    spoil(scripts)
    lm = build_chain_lm(tmp_path / "lm", scripts)
    with pytest.raises(PriorValidationError, match=message):
        PriorsCLI(str(src_root)).generate(str(lm), "v2", template=str(src_root / "prompts" / "test_template.txt"),
                                          n=8, max_new_tokens=400)
    assert not (src_root / "v2").exists() and _no_temp_left(src_root)


def test_controlled_valid_output_writes_version(tmp_path, src_root):
    scripts = good_scripts()
    lm = build_chain_lm(tmp_path / "lm", scripts)
    cli = PriorsCLI(str(src_root))
    out = Path(cli.generate(str(lm), "v2", template=str(src_root / "prompts" / "test_template.txt"), n=8,
                            max_new_tokens=400))
    assert out == src_root / "v2" and _no_temp_left(src_root)
    man = read_manifest(out)
    assert [c["name"] for c in man["classes"]] == list(KEEP) and man["classes_from"] == "v1"
    for cls in man["classes"]:
        assert read_descriptions(out / cls["file"]) == scripts[cls["name"]]  # exactly what the model decoded
    gen = man["generator"]
    assert "greedy" in gen["method"] and "max_new_tokens=400" in gen["method"] and len(gen["model_files_sha256"]) == 64
    assert man["prompt_template"]["file"] == "prompts/test_template.txt" and man["review"]["reviewed"] is False
    with pytest.raises(AssetError, match="no embeddings"):
        load_prior_bank("v2", src_root)
    cli.embed("v2")
    bank = load_prior_bank("v2", src_root)
    assert bank.class_names == list(KEEP) and bank.embeddings.shape == (3, 8, 384)
    # same model, same prompts: greedy decoding is deterministic; a second run must not overwrite v2
    with pytest.raises(AssetError, match="already exists"):
        cli.generate(str(lm), "v2", template=str(src_root / "prompts" / "test_template.txt"), n=8)
    cli.generate(str(lm), "v3", template=str(src_root / "prompts" / "test_template.txt"), n=8, max_new_tokens=400)
    for cls in man["classes"]:
        assert (src_root / "v3" / cls["file"]).read_bytes() == (out / cls["file"]).read_bytes()


def test_template_outside_prompts_is_kept_with_version(tmp_path, src_root):
    lm = build_chain_lm(tmp_path / "lm", good_scripts())
    outside = tmp_path / "my_template.txt"
    outside.write_text(TEMPLATE)
    out = generate_version(str(lm), "v2", root=src_root, template=outside, n=8, max_new_tokens=400, log=lambda _: None)
    man = read_manifest(out)
    assert man["prompt_template"]["file"] == "v2/prompt_template.txt"
    assert (out / "prompt_template.txt").read_text() == TEMPLATE


def test_bad_names_and_missing_model(tmp_path, src_root):
    with pytest.raises(AssetError, match="bad version name"):
        generate_version(tmp_path, "../v2", root=src_root)
    with pytest.raises(AssetError, match="already exists"):
        generate_version(tmp_path, "v1", root=src_root)
    with pytest.raises(AssetError, match="has no config.json"):
        generate_version(tmp_path / "nothing", "v2", root=src_root)
