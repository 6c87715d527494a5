"""The ``priorsam`` command line (python-fire): every command's adapter lives in this package, one
module a group, imported lazily so ``priorsam --help`` and bad-input errors do not wait for torch.

The adapters only parse, check and print; the work is the library's (:func:`priorsam.segment`,
:mod:`priorsam.engine`, :mod:`priorsam.batch`, :mod:`priorsam.evaluation`, :mod:`priorsam.priors`).
"""
from __future__ import annotations

import importlib
import sys

from ..errors import one_line_errors

# group name -> "module:attribute"; kept lazy so `priorsam --help` does not import torch.
_GROUPS = {
    "segment-box": "priorsam.cli.segment_box:segment_box_cli",
    "segment": "priorsam.cli.segment:segment_cli",
    "priors": "priorsam.cli.priors:PriorsCLI",
    "batch": "priorsam.cli.batch:batch_cli",
    "train": "priorsam.cli.train:train_cli",
    "evaluate": "priorsam.cli.evaluate:evaluate_cli",
    "samples": "priorsam.cli.samples:samples_cli",
    "bundle": "priorsam.cli.bundle:BundleCLI",
}


def _load(spec: str):
    module, attr = spec.split(":")
    obj = getattr(importlib.import_module(module), attr)
    return obj() if isinstance(obj, type) else obj


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("--version", "-V", "version"):
        from ..version import __version__

        print(f"priorsam {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in _GROUPS:
        print("usage: priorsam {" + ",".join(_GROUPS) + "} [args]\n  priorsam GROUP --help for details\n"
              "  priorsam --version")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return _fire(argv)


@one_line_errors
def _fire(argv: list[str]) -> int:
    import fire

    fire.Fire(_load(_GROUPS[argv[0]]), command=argv[1:], name=f"priorsam {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
