"""Optimizers: Muon (Newton–Schulz / AuON / Hybrid-AuON) with AdamW for the other parameters."""

from weightkit.optim.muon import Muon, split_muon_params

__all__ = ["Muon", "split_muon_params"]
