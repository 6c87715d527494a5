"""Slicer-free logic of the PriorSAM module.

Nothing here imports ``slicer``, ``qt`` or ``priorsam`` at import time, so plain pytest covers it
and Slicer can load the module before any dependency is installed. Functions that must touch the
MRML scene take the ``slicer`` module as an argument (see :mod:`.segmentation_io`).
"""
