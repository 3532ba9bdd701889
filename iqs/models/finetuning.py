"""The study's two-stage schedule as a Lightning finetuning callback."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning
from torch.optim import Optimizer


class TwoStageFinetuning(BaseFinetuning):
    """Train the head alone with the backbone frozen, then everything at another rate.

    Stage 1 (epochs ``< unfreeze_at_epoch``): backbone frozen, the optimizer's own learning rate
    (e.g. 1e-3). Stage 2: the backbone joins the optimizer and every parameter group is set to
    ``stage2_lr`` (e.g. 1e-5), or the backbone gets ``backbone_lr_ratio`` x ``stage2_lr`` for
    layer-wise rates. The module must expose ``backbone``.
    """

    def __init__(
        self, unfreeze_at_epoch: int = 3, stage2_lr: float = 1e-5, backbone_lr_ratio: float = 1.0
    ) -> None:
        super().__init__()
        self.unfreeze_at_epoch = unfreeze_at_epoch
        self.stage2_lr = stage2_lr
        self.backbone_lr_ratio = backbone_lr_ratio

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(pl_module.backbone, train_bn=False)

    def finetune_function(
        self, pl_module: pl.LightningModule, current_epoch: int, optimizer: Optimizer
    ) -> None:
        if current_epoch != self.unfreeze_at_epoch:
            return
        for group in optimizer.param_groups:
            group["lr"] = self.stage2_lr
        self.unfreeze_and_add_param_group(
            pl_module.backbone,
            optimizer,
            lr=self.stage2_lr * self.backbone_lr_ratio,
            train_bn=True,
            initial_denom_lr=1.0,
        )
