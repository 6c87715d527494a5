"""PriorSAM: text-prior-guided Segment Anything for abdominal multi-organ CT."""

__version__ = "0.1.0"
