"""Engine options given as text (``priorsam segment --option localiser_shifts=4``): each name checked
against :class:`~priorsam.engine.segment.SegmentOptions` and each value read as that field's type, so a
typo is one clear error instead of an option silently left at its default."""
from __future__ import annotations

import typing
from dataclasses import fields

from ..errors import InputError

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text", type(None): "none"}


def hint_types(hint) -> tuple[type, ...]:
    """``int | None`` → (int, NoneType); ``float`` → (float,)."""
    return tuple(typing.get_args(hint)) or (hint,)


def _field_types(options_cls) -> dict[str, tuple[type, ...]]:
    hints = typing.get_type_hints(options_cls)
    return {f.name: hint_types(hints[f.name]) for f in fields(options_cls)}


def read_value(what: str, raw, types: tuple[type, ...]):
    """``raw`` (text, or what fire parsed it into) read as the first of ``types`` it fits; ``what`` names it
    in the :class:`InputError` when it fits none."""
    # fire hands over numbers, booleans and None already parsed; their text reads back the same
    text = str(raw).strip()
    if text.lower() in ("none", "null") and type(None) in types:
        return None
    if bool in types:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
    for t in (int, float):
        if t in types:
            try:
                return t(text)
            except ValueError:
                continue
    if str in types:
        return text
    raise InputError(f"{what}: {raw!r} is not {' or '.join(_KINDS.get(t, t.__name__) for t in types)}")


def parse_options(values, options_cls=None) -> dict:
    """``{"name": value}`` for the engine from a dict or from ``"name=value,name=value"`` text (a list or
    tuple of such strings too). Unknown names and values of the wrong type raise :class:`InputError`."""
    if options_cls is None:
        from .segment import SegmentOptions as options_cls
    if values is None or values == "":
        return {}
    if isinstance(values, dict):
        items = list(values.items())
    else:
        parts = [values] if isinstance(values, str) else list(values)
        items = []
        for part in parts:
            for item in str(part).split(","):
                if not item.strip():
                    continue
                if "=" not in item:
                    raise InputError(f"option {item.strip()!r}: write it as name=value")
                key, raw = item.split("=", 1)
                items.append((key.strip(), raw))
    types = _field_types(options_cls)
    out = {}
    for key, raw in items:
        if key not in types:
            raise InputError(f"unknown option {key!r}; the options are: {', '.join(sorted(types))}")
        out[key] = read_value(f"option {key}", raw, types[key])
    return out
