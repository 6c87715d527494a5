"""``priorsam samples``: fetch the sample CT into the cache and print where it is."""
from __future__ import annotations


def samples_cli():
    """`priorsam samples`: fetch the sample CT into the cache and print its paths."""
    from ..data.samples import sample_ct

    s = sample_ct()
    return {"image": str(s.image), "label": str(s.label), "raw_label": str(s.raw_label), "dicom_dir": str(s.dicom_dir)}
