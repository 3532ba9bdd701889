"""The study's two-stage schedule as a Lightning finetuning callback."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer


class TwoStageFinetuning(BaseFinetuning):
    """Train the head alone with the backbone frozen, then everything at another rate.

    Stage 1 (epochs ``< unfreeze_at_epoch``): backbone frozen, the optimizer's own learning rate
    (e.g. 1e-3); its batch norm layers run in inference mode, on their stored statistics, as a
    frozen Keras base (the study's) does, so a photo's features do not depend on the others in
    its batch and training sees the features validation and export see. Stage 2: the backbone
    joins the optimizer and every parameter group is set to ``stage2_lr`` (e.g. 1e-5), or the
    backbone gets ``backbone_lr_ratio`` x ``stage2_lr`` for layer-wise rates. A run resumed in
    stage 2 continues with the backbone trainable. The module must expose ``backbone``.
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

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)  # unfreezes at unfreeze_at_epoch
        stage2 = trainer.current_epoch >= self.unfreeze_at_epoch
        if trainer.current_epoch > self.unfreeze_at_epoch:
            # A run resumed in stage 2 got the backbone's parameter group back (on_fit_start),
            # but setup froze the backbone again.
            self.make_trainable(pl_module.backbone)
        for module in pl_module.backbone.modules():
            if isinstance(module, _BatchNorm):
                module.train(stage2)

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
