"""Models: timm backbones, small heads, losses and the LightningModule that joins them."""
