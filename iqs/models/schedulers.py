"""Learning-rate schedules that torch builds from several of its own schedulers."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


def warmup_cosine(
    optimizer: Optimizer,
    warmup_epochs: int,
    max_epochs: int,
    start_factor: float = 0.1,
    eta_min: float = 0.0,
) -> LRScheduler:
    """Linear warm-up from ``start_factor`` x lr over ``warmup_epochs``, then cosine decay."""
    if warmup_epochs <= 0:
        return CosineAnnealingLR(optimizer, T_max=max_epochs, eta_min=eta_min)
    return SequentialLR(
        optimizer,
        [
            LinearLR(optimizer, start_factor=start_factor, total_iters=warmup_epochs),
            CosineAnnealingLR(optimizer, T_max=max(1, max_epochs - warmup_epochs), eta_min=eta_min),
        ],
        milestones=[warmup_epochs],
    )
