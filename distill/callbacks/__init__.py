"""Layer 4: callbacks that evaluate, draw sample grids and report to the logger."""

from distill.callbacks.evaluation import EvaluationCallback

__all__ = ["EvaluationCallback"]
