"""Data files of the package: the label table, and the folders the wheel carries in ``priorsam/_data``.

A wheel or sdist install has ``bundle/`` (configs, docs, the demo weights in ``models/``) and
``prior_text/`` copied into ``priorsam/_data/`` at build time (``setup.py``); a source checkout
(editable install, ``make install``) has them beside the package instead. :func:`data_dir` is the
one place that knows both layouts; the resolvers of each resource
(:func:`priorsam.engine.weights.default_weights_path`, :func:`priorsam.priors.bank.prior_text_root`,
:func:`priorsam.bundle_support.paths.bundle_root`) ask it, so nothing else looks at file layouts.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

#: folders shipped in the distribution (name under priorsam/_data/ == name in the source tree)
DATA_DIRS = ("bundle", "prior_text")


def data_dir(name: str) -> Path:
    """The folder ``name`` (one of :data:`DATA_DIRS`): the installed copy, else the source checkout's.

    Returns the path even when neither exists, so callers can say what is missing.
    """
    if name not in DATA_DIRS:
        raise ValueError(f"unknown data folder {name!r}: one of {DATA_DIRS}")
    # files() of an installed (non-zip) package is a real directory; wheels are unpacked by pip.
    packaged = Path(str(resources.files("priorsam") / "_data" / name))
    if packaged.is_dir():
        return packaged
    return Path(str(resources.files("priorsam"))).parent / name
