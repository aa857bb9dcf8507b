"""Helpers that several test files share and that need torch alone (no JAX): import them as a plain module."""

from __future__ import annotations

import torch


def randomise_batch_norms(model, seed: int = 0) -> None:
    """Give every batch norm non-trivial statistics and affine parameters, so eval mode tests them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=gen) - 0.5)
