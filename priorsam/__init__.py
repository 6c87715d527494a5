"""PriorSAM: text-prior-guided Segment Anything for abdominal multi-organ CT.

``priorsam.segment(input, output=None, **options)`` segments one CT (see :mod:`priorsam.api`).
It is imported on first use, so ``import priorsam`` (and ``priorsam --help``) stays light.
"""

from .version import __version__

__all__ = ["__version__", "segment"]


def __getattr__(name):
    if name == "segment":
        from .api import segment

        return segment
    raise AttributeError(f"module 'priorsam' has no attribute {name!r}")
