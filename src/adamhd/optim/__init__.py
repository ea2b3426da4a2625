"""Optimizers other than AdamHD, and optimizer wrappers."""

from adamhd.optim.lookahead import Lookahead

__all__ = ["Lookahead"]
