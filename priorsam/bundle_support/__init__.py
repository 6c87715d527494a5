"""MONAI bundle support: transforms, inferers, handlers and paths used by ``bundle/configs``.

The bundle's configs call only these and the library; they hold no preprocessing of their own.
"""
from .paths import BUNDLE_NAME, bundle_root, case_name, image_datalist, labelled_datalist

__all__ = ["BUNDLE_NAME", "bundle_root", "case_name", "image_datalist", "labelled_datalist"]
