"""Full precision inside a mixed-precision step: the few computations bf16 would spoil.

Under ``hardware.precision=bf16-mixed`` Lightning runs the whole training step inside
``torch.autocast``, so every matmul and convolution rounds to bf16 (relative error 2^-8). That is
harmless for a loss's forward, but not for quantities that are small differences of large ones or
tangents of them: JVPs (sCM, MeanFlow), consistency targets whose gap shrinks to 1/256 of the
range (ECT's last stage), the teacher-minus-fake-score difference of distribution matching. The
officials compute these in fp32: py-meanflow runs the JVP and the loss with autocast disabled
(``meanflow/models/meanflow.py:54-66``), FastGen's sCM and MeanFlow take ``precision_amp_jvp="float32"``
(``fastgen/methods/consistency_model/sCM.py:166-179``), ECT and the CIFAR-10 configs train in fp32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

AUTOCAST_DEVICES = ("cuda", "cpu", "mps", "xpu")


@contextmanager
def full_precision() -> Iterator[None]:
    """Autocast off on every device type where it is on, for the block's duration (restored after).

    Networks then run in their parameters' dtype: fp32 under ``bf16-mixed`` (whose weights stay fp32);
    under ``bf16-true`` the weights themselves are bf16 and this changes nothing.
    """
    with ExitStack() as stack:
        for device in AUTOCAST_DEVICES:
            if torch.is_autocast_enabled(device):
                stack.enter_context(torch.autocast(device, enabled=False))
        yield
