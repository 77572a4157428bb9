"""Layer 2: trainable students and their flow-map parameterizations ``Phi(x_s, s -> s_next)``."""
