"""Which checkpoint an evaluation run is measured with.

A run (``{"name", "weights", "options", ...}`` in the runs files of :mod:`.generalisation` and
:mod:`.anatomy_holdout`) names its weights; with ``"localiser_from"`` it takes the 2D heads of
``weights`` and the 3D localiser of another checkpoint. That keeps an earlier bundle measurable after
its weights are replaced, when only its heads changed (e.g. bundle 0.5.1 = the one-scan heads in
docs/ablation_weights plus the localiser that bundle 0.6.0 still ships), without committing a second
copy of the localiser. A file named ``git:REV:PATH`` is that file as committed at ``REV`` (read with
``git show`` from the repository this package runs from, into the user cache): rows of a bundle whose
weights were replaced stay measurable from the history instead of a second committed copy.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import subprocess
from pathlib import Path


def run_file(name: str, repo: str | os.PathLike | None = None) -> str:
    """A run's checkpoint path, ``git:REV:PATH`` resolved to a cached copy of that file as committed in
    ``repo`` (default: the repository this package runs from)."""
    if not str(name).startswith("git:"):
        return name
    from ..assets import cache_dir

    try:
        _, rev, path = str(name).split(":", 2)
    except ValueError:
        raise ValueError(f"{name}: write a committed file as git:REV:PATH") from None
    repo = Path(repo) if repo is not None else Path(__file__).resolve().parents[2]
    try:
        full = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", f"{rev}^{{commit}}"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ValueError(f"{name}: {rev} is not a commit of {repo} ({exc})") from None
    # One folder per commit and path, so a checkpoint's box decoder file lands beside it as it was committed.
    out = cache_dir("git_weights") / f"{full[:12]}_{hashlib.sha256(path.encode()).hexdigest()[:12]}" / Path(path).name
    _git_show(repo, full, path, out, name)
    companion = _box_decoder_file(out)
    if companion:
        folder = posixpath.dirname(path)
        _git_show(repo, full, posixpath.join(folder, companion) if folder else companion, out.with_name(companion), name)
    return str(out)


def _git_show(repo: Path, commit: str, path: str, out: Path, name: str) -> None:
    """``commit:path`` of ``repo`` written to ``out`` (atomically; kept when already there)."""
    if out.is_file():
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".{os.getpid()}.part")
    with open(tmp, "wb") as fh:
        done = subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{path}"], stdout=fh, stderr=subprocess.PIPE)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{name}: {done.stderr.decode().strip()}")
    os.replace(tmp, out)


def _box_decoder_file(checkpoint: Path) -> str:
    """The box decoder file a PriorSAM checkpoint's spec names beside it ("" for any other file)."""
    import torch

    from ..models.spec import spec_of

    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception:       # not a checkpoint (any committed file may be asked for): nothing beside it
        return ""
    spec = spec_of(state) if isinstance(state, dict) else None
    return spec.box_decoder.file if spec is not None and spec.box_decoder is not None else ""


def run_weights(run: dict) -> str:
    """The checkpoint file of ``run``: its ``weights``, or those heads composed with the localiser of
    ``localiser_from`` (written once into the user cache, keyed by both files' contents)."""
    weights = run_file(run["weights"])
    if not run.get("localiser_from"):
        return weights
    from ..assets import cache_dir, sha256_file
    from ..errors import AssetError
    from ..models.spec import compose_checkpoint

    localiser = run_file(run["localiser_from"])
    key = hashlib.sha256((sha256_file(weights) + sha256_file(localiser)).encode()).hexdigest()[:16]
    out = cache_dir("composed_weights") / f"{key}.pt"
    if not out.is_file():
        try:
            compose_checkpoint(weights, localiser, out)
        except AssetError as exc:       # a runs file naming the wrong file: the run is what is wrong
            raise ValueError(f"localiser_from: {exc}") from exc
    return str(out)
