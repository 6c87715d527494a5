"""MONAI-side adapters around the library's volume engine (no preprocessing of their own).

After ``LoadImaged`` (channel first) and ``Orientationd(axcodes="RAS")`` the image is a
MetaTensor (1, X, Y, Z) in HU on a RAS grid with its affine in the meta data. These
adapters turn it into a :class:`priorsam.io.Volume`, run
:func:`priorsam.segment` (the library's one entry point) and hand back the label map as a
MetaTensor with the image's meta data, so ``Invertd`` can undo the orientation and
``SaveImaged`` writes it on the input's grid.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..engine.device import resolve_device
from ..engine.progress import StdoutProgress
from ..engine.segment import SegmentOptions
from ..errors import InputError
from ..io.volume import Source, Volume, canonicalize


def bundle_device(device: str | torch.device | None = "auto") -> torch.device:
    """The config's ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, or a ``torch.device`` from an
    expression override) → a torch.device; ``cuda`` without a usable GPU is one InputError line."""
    if isinstance(device, torch.device):
        device = str(device)
    return resolve_device(str(device) if device is not None else "auto")


def one_line_errors() -> None:
    """Make ``python -m monai.bundle run`` end a PriorSAM input/asset error with one ``error: …`` line
    (exit 1) instead of MONAI's chained traceback; other errors keep their traceback.

    Installed as ``sys.excepthook`` from the config's ``initialize``; it only sees exceptions nothing
    caught, so in-process users (ConfigWorkflow in Python, tests) still get the exception itself.
    """
    import sys

    from ..errors import PriorSAMError

    previous = sys.excepthook
    if getattr(previous, "_priorsam", False):
        return

    def hook(kind, value, tb):
        seen, exc = set(), value
        while exc is not None and id(exc) not in seen:
            if isinstance(exc, PriorSAMError):
                print(f"error: {exc}", file=sys.stderr)
                return
            seen.add(id(exc))
            exc = exc.__cause__ or exc.__context__
        previous(kind, value, tb)

    hook._priorsam = True
    sys.excepthook = hook


def load_network(ckpt_path: str, device: str | torch.device = "auto"):
    """The full PriorSAM (pretrained encoder + binary path + trained heads) from a bundle checkpoint."""
    from ..engine.weights import load_priorsam

    return load_priorsam(str(ckpt_path), str(resolve_device(str(device))))


def volume_from_image(image: torch.Tensor) -> Volume:
    """A (1, X, Y, Z) MetaTensor (RAS-oriented, HU) → a canonical :class:`Volume` (checks the input too)."""
    if not isinstance(image, MetaTensor):
        raise InputError("the image must be a MetaTensor from LoadImaged (it carries the affine)")
    if image.ndim != 4 or image.shape[0] != 1:
        raise InputError(f"expected a channel-first single-channel 3D image (1,X,Y,Z), got {tuple(image.shape)}")
    array = image[0].detach().cpu().numpy().astype(np.float32, copy=False)
    affine = np.asarray(image.affine.detach().cpu().numpy(), dtype=np.float64)
    if affine.shape == (1, 4, 4):
        affine = affine[0]
    path = str(image.meta.get("filename_or_obj", "<image>"))
    fmt = "dicom" if Path(path).is_dir() else "nifti"
    source = Source(path, fmt, tuple(array.shape), affine, np.zeros((3, 2)))
    return canonicalize(array, affine, source)


def _labels_like(labels: np.ndarray, image: MetaTensor) -> MetaTensor:
    """The (1, X, Y, Z) uint8 label map with ``image``'s meta data (affine, file name, applied transforms)."""
    out = MetaTensor(torch.from_numpy(np.ascontiguousarray(labels)).to(torch.uint8)[None])
    out.copy_meta_from(image, copy_attr=True)
    return out


class SegmentOrgansInferer:
    """An inferer for MONAI engines: ``inferer(inputs, network)`` with inputs (B, 1, X, Y, Z) HU
    MetaTensors on a RAS grid and ``network`` a loaded PriorSAM → (B, 1, X, Y, Z) uint8 labels.

    Args:
        options: :class:`SegmentOptions` fields (None: the library's defaults, as trained).
        progress: print ``PRIORSAM_PROGRESS done total`` lines (parsed by the Slicer module).
        show_bar: a tqdm bar on stderr.
    """

    def __init__(self, options: Mapping[str, Any] | None = None, progress: bool = True, show_bar: bool = False):
        SegmentOptions(**dict(options or {}))  # reject unknown option names at config time
        self.options = dict(options or {})
        self.progress = bool(progress)
        self.show_bar = bool(show_bar)
        self.last_results: list = []

    def segment_image(self, image: MetaTensor, network) -> MetaTensor:
        """One (1, X, Y, Z) image → its (1, X, Y, Z) label MetaTensor (through :func:`priorsam.segment`)."""
        from ..api import segment

        seg = segment(volume_from_image(image), model=network, progress=StdoutProgress() if self.progress else None,
                      show_bar=self.show_bar, **self.options)
        self.last_results.append(seg.result)
        return _labels_like(seg.labels, image)

    def __call__(self, inputs: torch.Tensor, network, *args: Any, **kwargs: Any) -> MetaTensor:
        if not isinstance(inputs, MetaTensor) or inputs.ndim != 5:
            raise InputError(f"expected a batch of MetaTensor images (B,1,X,Y,Z), got {tuple(inputs.shape)}")
        self.last_results = []
        # Indexing a batched MetaTensor gives each item its own meta data (affine, file name).
        items = [self.segment_image(inputs[i], network) for i in range(inputs.shape[0])]
        return torch.stack(items) if len(items) > 1 else items[0][None]


class SegmentOrgansd(MapTransform):
    """Dictionary transform form of :class:`SegmentOrgansInferer`: ``data[image_key]`` → ``data[output_key]``.

    For pipelines without an engine (e.g. a plain ``Compose``); the network is loaded once.
    """

    def __init__(self, keys: str = "image", output_key: str = "pred", ckpt_path: str | None = None,
                 device: str = "auto", options: Mapping[str, Any] | None = None, progress: bool = True,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.output_key = output_key
        self.network = load_network(ckpt_path, device) if ckpt_path else load_network(_default_ckpt(), device)
        self.inferer = SegmentOrgansInferer(options, progress)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key] = self.inferer.segment_image(d[key], self.network)
        return d


def _default_ckpt() -> str:
    from ..engine.weights import default_weights_path

    return str(default_weights_path())
