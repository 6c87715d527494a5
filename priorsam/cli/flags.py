"""Every command's arguments read by the types of its signature before it runs.

python-fire hands arguments over as it parsed them: an output named ``123`` arrives as an int,
``--z_stride abc`` as text and ``--force=false`` as the (true) string ``"false"``. Read here by each
parameter's annotation, a file name is always text and a wrong value is one clear error naming the flag,
instead of a traceback or a run that silently did something else.
"""
from __future__ import annotations

import functools
import inspect
import typing

from ..engine.option_values import hint_types, read_value


def typed_flags(fn):
    """``fn`` with its annotated arguments read as their types (``str`` ones as text, ``None`` kept where
    allowed); unannotated ones (engine ``option`` strings, ``**overrides``) pass as they are. The wrapper
    keeps ``fn``'s signature and docstring, which fire reads for its help and argument order."""
    hints = typing.get_type_hints(fn)
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            param = sig.parameters[name]
            if name not in hints or value is None or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            types = hint_types(hints[name])
            if str in types:
                # fire reads "2,2,1,20,20,3" (a box) as a tuple of numbers: back to the text that was typed
                text = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
                bound.arguments[name] = text
            else:
                bound.arguments[name] = read_value(f"--{name}", value, types)
        return fn(*bound.args, **bound.kwargs)

    # fire reads signatures with inspect.getfullargspec, which does not follow __wrapped__.
    run.__signature__ = sig
    return run
