"""Layer 2: distillation objectives. A method's loss is callable on an MLP teacher on CPU."""

from distill.methods.base import Method
from distill.methods.consistency import ConsistencyDistillation
from distill.methods.consistency_training import ConsistencyTraining
from distill.methods.progressive import ProgressiveDistillation

__all__ = ["Method", "ConsistencyDistillation", "ConsistencyTraining", "ProgressiveDistillation"]
