"""Optimizers: Muon (Newton–Schulz / AuON / Hybrid-AuON) with AdamW for the other parameters."""

from weightkit.optim.drop import DropSchedule, find_blocks
from weightkit.optim.muon import Muon, split_muon_params

__all__ = ["DropSchedule", "Muon", "find_blocks", "split_muon_params"]
