"""Layer 3: LightningModules. They own the networks and delegate every loss to layer 2."""

import warnings

# Frozen teachers, EMA copies and round snapshots are in eval mode on purpose.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
# Checkpoints after the optimizer step are what resume wants; Lightning warns about manual optimization.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
