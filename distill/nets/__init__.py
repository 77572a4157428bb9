"""Layer 1: networks (plain PyTorch). Every net takes ``(x, c_noise)`` and returns x's shape."""
