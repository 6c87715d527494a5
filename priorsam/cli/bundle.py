"""``priorsam bundle``: export the MONAI bundle shipped with the package, or say where it is."""
from __future__ import annotations

from .flags import typed_flags


class BundleCLI:
    """The MONAI bundle shipped with priorsam."""

    @typed_flags
    def export(self, dir: str):
        """Write a complete MONAI bundle folder to DIR (new or empty).

        Then: cd DIR && python -m monai.bundle run --config_file configs/inference.json
        --dataset_dir IN --output_dir OUT [--device auto|cpu|cuda]
        """
        from ..bundle_support.export import export_bundle

        out = export_bundle(dir)
        return {"bundle": str(out), "run": f"cd {out} && python -m monai.bundle run --config_file "
                                          "configs/inference.json --dataset_dir IN --output_dir OUT"}

    def path(self):
        """Where the installed bundle is (read-only use; export a copy to change it)."""
        from ..bundle_support.paths import packaged_bundle

        return str(packaged_bundle())
