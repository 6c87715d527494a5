"""Errors that reach users as one clear line and a non-zero exit."""


class PriorSAMError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""


class InputError(PriorSAMError):
    """The image, label map, box or path given is unusable."""


class AssetError(PriorSAMError):
    """A pretrained asset (weights, text encoder, priors) is missing or altered."""


class Cancelled(PriorSAMError):
    """The caller's progress callback asked to stop."""
