"""Batch jobs for clinical research: a folder or CSV of CTs in; label maps, DICOM SEG and
per-case reports out; resumable; one or many processes (``torchrun``).

Entry points: :func:`priorsam.batch.runner.run_batch` (library, bundle) and
``priorsam batch`` (:func:`priorsam.batch.runner.batch_cli`).
"""
from .discover import Case, discover_cases, partition

__all__ = ["Case", "discover_cases", "partition"]
