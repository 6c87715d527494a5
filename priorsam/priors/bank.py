"""The prior bank: a version's descriptions and their frozen embeddings, verified on load.

Loading checks, in order: the manifest schema, the sha256 of every text file and of the
prompt template, that the embeddings were computed from exactly these texts, and the hash
of the embedding tensor itself. Any mismatch is one :class:`AssetError` line. Checkpoints
record :meth:`PriorBank.identity`; :func:`check_identity` refuses to pair a checkpoint with
other priors.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import AssetError
from .manifest import EMBEDDINGS, VERSION_RE, read_manifest, sha256_bytes, text_hashes, verify_files


@dataclass
class PriorBank:
    """Descriptions and embeddings of one prior version.

    ``embeddings`` is float32 ``(C, K_max, D)`` with L2-normalised rows and zero rows for
    padding; ``mask`` is bool ``(C, K_max)``, True where a row is a real description.
    Class 0 is background; the rest follow label-id order.
    """

    version: str
    class_names: list[str]
    label_ids: list[int]
    texts: list[list[str]]
    embeddings: torch.Tensor
    mask: torch.Tensor
    encoder_id: str
    embedding_sha256: str

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[-1])

    def identity(self) -> dict:
        """What a checkpoint must store to be paired with these priors again."""
        return {"prior_version": self.version, "prior_embedding_sha256": self.embedding_sha256,
                "prior_encoder_id": self.encoder_id, "prior_class_names": list(self.class_names)}


def check_identity(recorded: dict, bank: PriorBank) -> None:
    """Raise :class:`AssetError` unless ``recorded`` (from a checkpoint) names exactly ``bank``'s priors."""
    want_v, want_h = recorded.get("prior_version"), recorded.get("prior_embedding_sha256")
    if not want_v or not want_h:
        raise AssetError("checkpoint does not record its prior version and embedding hash; it cannot be paired with priors")
    if want_v != bank.version or want_h != bank.embedding_sha256:
        raise AssetError(f"checkpoint was trained with priors {want_v} (embeddings {want_h[:12]}…) but priors "
                         f"{bank.version} (embeddings {bank.embedding_sha256[:12]}…) are loaded; load priors {want_v}")
    names = recorded.get("prior_class_names")
    if names is not None and list(names) != bank.class_names:
        raise AssetError(f"checkpoint classes {names} differ from priors {bank.version} classes {bank.class_names}")


def prior_text_root() -> Path:
    """The ``prior_text/`` folder: ``$PRIORSAM_PRIOR_TEXT`` if set, else the installed copy (or the checkout's)."""
    env = os.environ.get("PRIORSAM_PRIOR_TEXT")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise AssetError(f"PRIORSAM_PRIOR_TEXT={env} is not a folder")
        return path
    from ..resources import data_dir

    path = data_dir("prior_text")
    if not path.is_dir():
        raise AssetError(f"prior texts not found at {path}: reinstall priorsam, or set PRIORSAM_PRIOR_TEXT to a "
                         "prior_text folder")
    return path


def list_versions(root: str | Path | None = None) -> list[str]:
    """Version folders (those with a manifest), sorted naturally (v2 before v10)."""
    root = Path(root) if root is not None else prior_text_root()
    found = [p.name for p in root.iterdir() if p.is_dir() and VERSION_RE.match(p.name) and (p / "manifest.json").is_file()]

    def key(name: str):
        digits = "".join(ch for ch in name if ch.isdigit())
        return (int(digits) if digits else -1, name)

    return sorted(found, key=key)


def version_folder(version: str, root: str | Path | None = None) -> Path:
    root = Path(root) if root is not None else prior_text_root()
    if not VERSION_RE.match(version or ""):
        raise AssetError(f"bad prior version name {version!r}")
    folder = root / version
    if not (folder / "manifest.json").is_file():
        have = ", ".join(list_versions(root)) or "none"
        raise AssetError(f"prior version {version} not found under {root} (available: {have})")
    return folder


def embedding_hash(embeddings: torch.Tensor) -> str:
    """sha256 of the float32 tensor's raw bytes (C-contiguous, native little-endian)."""
    return sha256_bytes(embeddings.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())


def pad_embeddings(flat: torch.Tensor, counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``flat`` ``(N, D)`` by ``counts`` into padded ``(C, K_max, D)`` plus mask ``(C, K_max)``."""
    k_max, dim = max(counts), flat.shape[1]
    emb = torch.zeros(len(counts), k_max, dim, dtype=torch.float32)
    mask = torch.zeros(len(counts), k_max, dtype=torch.bool)
    start = 0
    for c, n in enumerate(counts):
        emb[c, :n] = flat[start:start + n]
        mask[c, :n] = True
        start += n
    return emb, mask


def save_embeddings(folder: Path, man: dict, embeddings: torch.Tensor, mask: torch.Tensor, encoder_id: str,
                    encoder_sha256: str) -> str:
    """Write ``embeddings.safetensors`` with provenance metadata; returns the embedding sha256."""
    from safetensors.torch import save_file

    digest = embedding_hash(embeddings)
    meta = {"version": man["version"], "encoder_id": encoder_id, "encoder_sha256": encoder_sha256,
            "text_sha256": json.dumps(text_hashes(man), sort_keys=True),
            "class_names": json.dumps([c["name"] for c in man["classes"]]), "embedding_sha256": digest}
    tmp = folder / (EMBEDDINGS + ".tmp")
    save_file({"embeddings": embeddings.contiguous(), "mask": mask.contiguous()}, str(tmp), metadata=meta)
    tmp.chmod(0o644)  # safetensors writes owner-only files; the bank is shared read-only data
    tmp.replace(folder / EMBEDDINGS)
    return digest


def _read_embeddings(folder: Path, man: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    from safetensors import safe_open

    rec = man.get("embeddings")
    path = folder / (rec["file"] if rec else EMBEDDINGS)
    if not rec or not path.is_file():
        raise AssetError(f"prior version {man['version']} has no embeddings; run `priorsam priors embed --version {man['version']}`")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            emb, mask = fh.get_tensor("embeddings"), fh.get_tensor("mask")
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise AssetError(f"{path} is not a readable embeddings file: {exc}") from exc
    return emb, mask, meta


def load_prior_bank(version: str = "v1", root: str | Path | None = None) -> PriorBank:
    """Load and verify one prior version (see the module docstring for what is checked)."""
    root = Path(root) if root is not None else prior_text_root()
    folder = version_folder(version, root)
    man = read_manifest(folder)
    texts = verify_files(folder, man, root)
    emb, mask, meta = _read_embeddings(folder, man)
    rec, v = man["embeddings"], man["version"]
    try:
        recorded_texts = json.loads(meta.get("text_sha256", "{}"))
    except json.JSONDecodeError:
        recorded_texts = None
    if recorded_texts != text_hashes(man):
        raise AssetError(f"embeddings of priors {v} were computed from other texts; run `priorsam priors embed --version {v}`")
    counts = [len(t) for t in texts]
    if emb.dtype != torch.float32 or emb.dim() != 3 or mask.dtype != torch.bool or tuple(mask.shape) != tuple(emb.shape[:2]):
        raise AssetError(f"embeddings of priors {v} have a wrong layout ({emb.dtype} {tuple(emb.shape)}, mask {tuple(mask.shape)})")
    if emb.shape[0] != len(counts) or mask.sum(1).tolist() != counts or list(emb.shape) != list(rec["shape"]):
        raise AssetError(f"embeddings of priors {v} do not match its {len(counts)} classes / description counts")
    digest = embedding_hash(emb)
    if digest != meta.get("embedding_sha256") or digest != rec["embedding_sha256"]:
        raise AssetError(f"embeddings of priors {v} were altered (sha256 {digest[:12]}… ≠ recorded "
                         f"{rec['embedding_sha256'][:12]}…)")
    return PriorBank(version=v, class_names=[c["name"] for c in man["classes"]],
                     label_ids=[c["label_id"] for c in man["classes"]], texts=texts, embeddings=emb, mask=mask,
                     encoder_id=rec["encoder_id"], embedding_sha256=digest)
