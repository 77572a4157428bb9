"""Tiny float64 networks the parity tests run both sides of a comparison on."""

import torch
from torch import nn


class Velocity(nn.Module):
    """A float64 velocity net ``v(x, s)`` (B, D) with its time fed raw and smooth in s."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(dim + 1, 32), nn.Tanh(), nn.Linear(32, dim)).double()

    def forward(self, x, s):
        return self.body(torch.cat([x, s[:, None].to(x.dtype)], dim=1))
