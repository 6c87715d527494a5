"""Which checkpoint an evaluation run is measured with.

A run (``{"name", "weights", "options", ...}`` in the runs files of :mod:`.generalisation` and
:mod:`.anatomy_holdout`) names its weights; with ``"localiser_from"`` it takes the 2D heads of
``weights`` and the 3D localiser of another checkpoint. That keeps an earlier bundle measurable after
its weights are replaced, when only its heads changed (e.g. bundle 0.5.1 = the one-scan heads in
docs/ablation_weights plus the localiser that bundle 0.6.0 still ships), without committing a second
copy of the localiser.
"""
from __future__ import annotations

import hashlib


def run_weights(run: dict) -> str:
    """The checkpoint file of ``run``: its ``weights``, or those heads composed with the localiser of
    ``localiser_from`` (written once into the user cache, keyed by both files' contents)."""
    if not run.get("localiser_from"):
        return run["weights"]
    from ..assets import cache_dir, sha256_file
    from ..errors import AssetError
    from ..models.spec import compose_checkpoint

    key = hashlib.sha256((sha256_file(run["weights"]) + sha256_file(run["localiser_from"])).encode()).hexdigest()[:16]
    out = cache_dir("composed_weights") / f"{key}.pt"
    if not out.is_file():
        try:
            compose_checkpoint(run["weights"], run["localiser_from"], out)
        except AssetError as exc:       # a runs file naming the wrong file: the run is what is wrong
            raise ValueError(f"localiser_from: {exc}") from exc
    return str(out)
