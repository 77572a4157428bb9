"""Layer 2: distillation objectives. A method's loss is callable on an MLP teacher on CPU."""

from distill.methods.anyflow import AnyFlow
from distill.methods.arcflow import ArcFlow
from distill.methods.base import Method
from distill.methods.bezier import BezierDistillation
from distill.methods.composite import WeightedSum
from distill.methods.consistency import ConsistencyDistillation
from distill.methods.consistency_training import ConsistencyTraining
from distill.methods.dmd import DMD2
from distill.methods.gdd import GDD
from distill.methods.ladd import LADD
from distill.methods.meanflow import MeanFlow
from distill.methods.pcm import PhasedConsistency
from distill.methods.piflow import PiFlow
from distill.methods.progressive import ProgressiveDistillation
from distill.methods.reflow import Reflow
from distill.methods.scm import SCM
from distill.methods.sid import SiD
from distill.methods.sida import SiDA
from distill.methods.tcm import TruncatedConsistency

__all__ = [
    "Method",
    "AnyFlow",
    "ArcFlow",
    "BezierDistillation",
    "ConsistencyDistillation",
    "ConsistencyTraining",
    "DMD2",
    "GDD",
    "LADD",
    "MeanFlow",
    "PhasedConsistency",
    "PiFlow",
    "ProgressiveDistillation",
    "Reflow",
    "SCM",
    "SiD",
    "SiDA",
    "TruncatedConsistency",
    "WeightedSum",
]
