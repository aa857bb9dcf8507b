"""CBAM for PyTorch. The class is copied into every generated PyTorch file that uses the op (``source=``), so it
uses only the names such a file has: ``torch``, ``nn`` and ``F``."""

import torch
import torch.nn.functional as F  # noqa: F401 - the generated file has it too
from torch import nn


class CBAM(nn.Module):
    """CBAM (Woo et al., 2018): a channel gate from the average- and max-pooled map through one shared MLP, then a
    spatial gate from the channels' mean and max through a k x k convolution (without the paper's batch norm)."""

    def __init__(self, in_channels: int, reduction: int = 16, k: int = 7) -> None:
        super().__init__()
        hidden = max(1, in_channels // reduction)
        self.fc1 = nn.Conv2d(in_channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, in_channels, 1)
        self.spatial = nn.Conv2d(2, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        top = self.fc2(torch.relu(self.fc1(x.amax((2, 3), keepdim=True))))
        x = x * torch.sigmoid(avg + top)
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.spatial(pooled))
