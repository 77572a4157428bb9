"""Layer 4: Lightning callbacks (evaluation and sample grids, progress, resume state, per-rank seeds,
preemption, the final checkpoint, speed switches)."""

from distill.callbacks.evaluation import EvaluationCallback

__all__ = ["EvaluationCallback"]
