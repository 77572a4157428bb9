"""Layer 2: distillation objectives. A method's loss is callable on an MLP teacher on CPU."""

from distill.methods.base import Method
from distill.methods.consistency import ConsistencyDistillation
from distill.methods.consistency_training import ConsistencyTraining
from distill.methods.meanflow import MeanFlow
from distill.methods.pcm import PhasedConsistency
from distill.methods.progressive import ProgressiveDistillation
from distill.methods.scm import SCM

__all__ = [
    "Method",
    "ConsistencyDistillation",
    "ConsistencyTraining",
    "MeanFlow",
    "PhasedConsistency",
    "ProgressiveDistillation",
    "SCM",
]
