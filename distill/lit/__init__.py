"""Layer 3: LightningModules. They own the networks and delegate every loss to layer 2."""
