"""Layer 1: processes, conversions, time grids, samplers, losses and EMA math. Plain PyTorch."""
