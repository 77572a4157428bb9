"""ECT's re-preconditioning: an EDM preconditioner's inner network under EDM's own scalings.

ECT (Geng et al. 2024) tunes EDM's CIFAR-10 VP model, yet trains it as ``ECMPrecond``
(``locuslab/ect training/networks.py:678-718``): the VP pickle's UNet weights are copied into a
network whose denoiser is ``D = c_skip x + c_out F(c_in x, ln(sigma) / 4)`` with EDM's c_skip,
c_out and c_in (``ct_training_loop.py:185-193``, ``copy_params_and_buffers(require_all=False)``).
So the consistency map keeps its output scale bounded at large sigma (``c_out -> sigma_data``)
instead of VP's ``c_out = -sigma``, which amplifies the network's error 80x at sigma = 80.
"""

from __future__ import annotations

from torch import nn

from distill.nets.edm import EDMPrecond, _Precond


class ECMPrecond(EDMPrecond):
    """EDM preconditioning around the inner network of ``precond`` (shared, not copied).

    Only the scalings change, so the parameter names (``model.*``) and a checkpoint's keys stay
    those of ``precond``. ECT's training-mode scalings are used at every call; its eval-mode
    shift of c_skip and c_out by sigma_min = 0.003 is not applied (below 1 % at sigma 0.821).
    """

    def __init__(self, precond: _Precond, sigma_data: float = 0.5):
        # Not EDMPrecond.__init__, which would build a new inner network: this one is reused.
        nn.Module.__init__(self)
        self.img_resolution, self.img_channels = precond.img_resolution, precond.img_channels
        self.label_dim, self.use_fp16 = precond.label_dim, precond.use_fp16
        self.model = precond.model
        # ECMPrecond's training range (sigma_max = inf); EDMVelocity reads these at construction only.
        self.sigma_min, self.sigma_max = (
            float(getattr(precond, "sigma_min", 0.0)),
            float(getattr(precond, "sigma_max", float("inf"))),
        )
        self.sigma_data = float(sigma_data)


def ecm_wrap(student: nn.Module, sigma_data: float = 0.5) -> nn.Module:
    """In place: a student ``EDMVelocity(<EDM preconditioner>)`` now runs its network as ``ECMPrecond``.

    Raises:
        ValueError: when the student is not an EDM network behind ``EDMVelocity`` (``student.net``).
    """
    net = getattr(student, "net", None)
    if not isinstance(net, _Precond):
        raise ValueError(
            "method.objective.student_precond=edm re-preconditions an EDM network (teacher=edm, "
            f"student=copy_of_teacher); this student is {type(student).__name__} around "
            f"{type(net).__name__}: use student_precond=keep"
        )
    if not isinstance(net, ECMPrecond):
        student.net = ECMPrecond(net, sigma_data)
    return student
