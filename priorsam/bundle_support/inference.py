"""MONAI-side adapters around the library's volume engine (no preprocessing of their own).

:class:`~.io_transforms.LoadVolumed` reads each input with the library's readers (the same checks,
warnings and canonical RAS grid as ``priorsam segment``) into a (1, X, Y, Z) MetaTensor that carries
the file's geometry. The inferer here turns it back into a :class:`priorsam.io.Volume`, runs
:func:`priorsam.segment` (the library's one entry point) and hands back the label map as a
MetaTensor with the image's meta data, which :class:`~.io_transforms.SaveLabelMapd` writes on the
input's own grid through :func:`priorsam.io.write_label_map`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.data import Dataset, MetaTensor
from monai.data.utils import collate_meta_tensor
from monai.transforms import MapTransform

from ..engine.device import resolve_device
from ..engine.progress import StdoutProgress
from ..engine.segment import SegmentOptions
from ..errors import AssetError, InputError, PriorSAMError, gpu_out_of_memory, out_of_memory_line
from .io_transforms import volume_of


def bundle_device(device: str | torch.device | None = "auto") -> torch.device:
    """The config's ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, or a ``torch.device`` from an
    expression override) → a torch.device; ``cuda`` without a usable GPU is one InputError line."""
    if isinstance(device, torch.device):
        device = str(device)
    return resolve_device(str(device) if device is not None else "auto")


def one_line_errors() -> None:
    """Make ``python -m monai.bundle run`` end a PriorSAM input/asset error, or a GPU out of memory, with one
    ``error: …`` line (exit 1) instead of MONAI's chained traceback; other errors keep their traceback.

    Installed as ``sys.excepthook`` from the config's ``initialize``; it only sees exceptions nothing
    caught, so in-process users (ConfigWorkflow in Python, tests) still get the exception itself.
    """
    import sys

    previous = sys.excepthook
    if getattr(previous, "_priorsam", False):
        return

    def hook(kind, value, tb):
        seen, exc = set(), value
        while exc is not None and id(exc) not in seen:
            if isinstance(exc, PriorSAMError):
                print(f"error: {exc}", file=sys.stderr)
                return
            if gpu_out_of_memory(exc):
                print(f"error: {out_of_memory_line(exc)}", file=sys.stderr)
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

    An image that fails (unreadable, refused by the input checks, or an error in the engine) does not
    stop the run: its label map is an empty placeholder marked with the error in its meta data
    (``FAILED_KEY``), which :class:`SkipFailed` records instead of saving.
    """

    def __init__(self, options: Mapping[str, Any] | None = None, progress: bool = True, show_bar: bool = False):
        from ..engine.option_values import parse_options
        from ..engine.segment import SegmentOptions

        self.options = parse_options(dict(options or {}))  # unknown names, wrong types: an error at config time
        SegmentOptions(**self.options)                     # and values out of range too
        self.progress = bool(progress)
        self.show_bar = bool(show_bar)
        self.last_results: list = []
        self._segmenter = None

    def segmenter(self, network):
        """One :class:`~priorsam.engine.segment.Segmenter` per network, kept across images: the encoder
        runtime (an OpenVINO or ONNX Runtime session) is set up once per run, not once per image."""
        from ..engine.segment import Segmenter

        if self._segmenter is None or self._segmenter.model is not network:
            device = str(next(network.parameters()).device)
            self._segmenter = Segmenter(None, device, SegmentOptions(**self.options), model=network)
        return self._segmenter

    def segment_image(self, image: MetaTensor, network) -> MetaTensor:
        """One (1, X, Y, Z) image → its (1, X, Y, Z) label MetaTensor (through :func:`priorsam.segment`)."""
        from ..api import segment

        seg = segment(volume_of(image), segmenter=self.segmenter(network),
                      progress=StdoutProgress() if self.progress else None, show_bar=self.show_bar)
        self.last_results.append(seg.result)
        return _labels_like(seg.labels, image)

    def __call__(self, inputs: torch.Tensor, network, *args: Any, **kwargs: Any) -> MetaTensor:
        if not isinstance(inputs, MetaTensor) or inputs.ndim != 5:
            raise InputError(f"expected a batch of MetaTensor images (B,1,X,Y,Z), got {tuple(inputs.shape)}")
        self.last_results = []
        # Indexing a batched MetaTensor gives each item its own meta data (affine, file name).
        items = [self._segment_or_mark(inputs[i], network) for i in range(inputs.shape[0])]
        # MONAI's own collation: the per-item meta data (the source geometry too) gets its batch axis back,
        # so the engine's decollation hands each item its own again.
        return collate_meta_tensor(items)

    def _segment_or_mark(self, image: MetaTensor, network) -> MetaTensor:
        error = image.meta.get(FAILED_KEY)
        if not error:
            try:
                return self.segment_image(image, network)
            except AssetError:
                raise  # the model itself is unusable: no image can succeed
            except Exception as exc:
                error = one_line(exc)
        out = _labels_like(np.zeros(tuple(image.shape[1:]), np.uint8), image)
        out.meta[FAILED_KEY] = error
        return out


class SegmentOrgansd(MapTransform):
    """Dictionary transform form of :class:`SegmentOrgansInferer`: ``data[image_key]`` → ``data[output_key]``.

    For pipelines without an engine, e.g. ``Compose([LoadVolumed("image"), SegmentOrgansd(),
    SaveLabelMapd("pred", OUT)])``; the network is loaded once.
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


# ------------------------------------------------------------------ one bad file must not stop the run

FAILED_KEY = "priorsam_error"   # meta-data key: why this item has no result


def one_line(exc: BaseException) -> str:
    """An exception as one line; MONAI wraps transform errors, so the innermost PriorSAM/OS message wins."""
    chain, cur = [], exc
    while cur is not None and all(cur is not c for c in chain):
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    exc = next((c for c in chain if isinstance(c, PriorSAMError)), chain[-1])  # else the root cause
    text = (str(exc).strip().splitlines() or [""])[0]
    if not isinstance(exc, PriorSAMError):
        return f"{type(exc).__name__}: {text}".rstrip(": ")
    from ..io.checks import FORCE_HINT

    # The bundle's switch for the CLI's --force is the config's "force".
    return text.replace(FORCE_HINT, "override with --force True")


class TolerantDataset(Dataset):
    """``monai.data.Dataset`` whose items do not raise: an item whose transforms fail (a truncated file)
    becomes a 1-voxel placeholder image carrying ``FAILED_KEY``, so the evaluator goes on with the others."""

    def _transform(self, index: int):
        try:
            return super()._transform(index)
        except Exception as exc:
            item = self.data[index]
            path = str(item.get("image", "<image>")) if isinstance(item, Mapping) else str(item)
            placeholder = MetaTensor(torch.zeros((1, 1, 1, 1)), meta={"filename_or_obj": path,
                                                                      FAILED_KEY: one_line(exc)})
            return {"image": placeholder}


class SkipFailed:
    """Postprocessing guard: runs ``transform`` (SaveLabelMapd) on good items only, records every
    failed item, and :meth:`finish` ends the run non-zero listing them (``failures.csv`` in ``output_dir``).

    ``output_dir`` is checked for writability when the config is built, before any model work.
    """

    def __init__(self, transform, output_dir: str | None = None):
        self.transform = transform
        self.output_dir = Path(output_dir) if output_dir else None
        self.failures: list[tuple[str, str]] = []
        self.done: list[str] = []
        if self.output_dir is not None:
            from ..io import check_writable

            check_writable(self.output_dir / "probe", suffixes=None)  # probes the nearest existing folder

    def __call__(self, data):
        import sys

        error, path = self._error_of(data)
        if not error:
            try:
                out = self.transform(data)
                self.done.append(path)
                return out
            except Exception as exc:
                error = one_line(exc)
        self.failures.append((path, error))
        print(f"error: {error if error.startswith(path) else f'{path}: {error}'}", file=sys.stderr, flush=True)
        return data

    @staticmethod
    def _error_of(data) -> tuple[str, str]:
        error, path = "", "<image>"
        for key in ("pred", "image"):
            item = data.get(key) if isinstance(data, Mapping) else None
            meta = getattr(item, "meta", None) or {}
            path = str(meta.get("filename_or_obj", path))
            error = error or str(meta.get(FAILED_KEY) or "")
        return error, path

    def finish(self) -> None:
        """After the evaluator: write or remove ``failures.csv``; raise :class:`BundleIncomplete` if any failed."""
        if self.output_dir is not None:
            table = self.output_dir / "failures.csv"
            if self.failures:
                from ..batch.report import write_csv

                write_csv(table, [{"input": p, "error": e} for p, e in self.failures], ["input", "error"])
            else:
                table.unlink(missing_ok=True)  # a stale table from an earlier run would mislead
        if self.failures:
            total = len(self.failures) + len(self.done)
            where = f"; see {self.output_dir / 'failures.csv'}" if self.output_dir is not None else ""
            raise BundleIncomplete(f"{len(self.failures)} of {total} inputs failed{where}: "
                                   + "; ".join(Path(p).name for p, _ in self.failures))


class BundleIncomplete(PriorSAMError):
    """Some inputs failed; the others were written."""
