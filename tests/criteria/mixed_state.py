"""A small model whose state scoring must not change: batch-norm running statistics, mixed train/eval modes, stale
gradients, frozen parameters. Shared by the side-effect tests of the criteria."""

from __future__ import annotations

import torch
from torch import nn


class ConvBNNet(nn.Module):
    """Conv + BatchNorm + Dropout + Linear, with a cross-entropy loss."""

    example_input_shape = (1, 6, 6)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(3 * 4 * 4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, pixel_values, labels=None):
        h = self.drop(torch.relu(self.bn(self.conv(pixel_values)))).flatten(1)
        logits = self.head(torch.relu(self.fc(h)))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def mixed_state_model(bn_momentum: float | None = None) -> ConvBNNet:
    """A seeded ``ConvBNNet`` with non-default running statistics (and ``bn_momentum`` when given), the BN in train
    mode and the dropout in eval mode, stale gradients on two parameters, a frozen prunable weight and a frozen bias."""
    torch.manual_seed(0)
    model = ConvBNNet()
    with torch.no_grad():
        model.bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        model.bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.5]))
        model.bn.num_batches_tracked.fill_(7)
    if bn_momentum is not None:
        model.bn.momentum = bn_momentum
    model.train()
    model.drop.eval()  # mixed modes: the BN trains (running stats would move), the dropout does not
    model.conv.weight.grad = torch.randn_like(model.conv.weight)
    model.head.bias.grad = torch.randn_like(model.head.bias)
    model.fc.weight.requires_grad_(False)  # a frozen prunable weight
    model.conv.bias.requires_grad_(False)
    return model
