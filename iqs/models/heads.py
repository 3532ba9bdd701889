"""Classification heads on top of pooled backbone features."""

from __future__ import annotations

from torch import Tensor, nn


class NimaHead(nn.Module):
    """The study's head: Dropout -> Dense(hidden, ReLU) -> Dense(outputs)."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 64, dropout: float = 0.5):
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_features),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class LinearHead(nn.Module):
    """Dropout -> one linear layer."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, out_features))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
