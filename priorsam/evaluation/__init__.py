"""Evaluation: per-case 3D Dice and HD95 (mm and voxels), Synapse-style averaging, reports."""
from .metrics import evaluate_case, summarise, write_report

__all__ = ["evaluate_case", "summarise", "write_report"]
