"""How much of a class-conditional teacher's dependence on the guidance scale w a guidance-input copy
of it learns in a short run, per ``student.guidance_lr_scale``: the choice of that default
(docs/methods.md 13).

    python experiments/guidance_lr.py teacher=~/.cache/distill/teachers/fashion_mnist_cpu_cond steps=30,150

Each run starts from the teacher's network with a zero-initialised w embedding and regresses the
teacher's guided velocity (w log-uniform on [1, 4] per sample, as ``student.guidance_range=[1,4]``
draws it) on noised training images (``dataset=``, default fashion_mnist), Adam at ``lr`` (default
2e-4, the Fashion-MNIST profile's) with the embedding at ``lr * scale``, ``batch`` images a step
(default 64). Then, at FM times 0.9 and 0.5 on fixed noise, it prints how far the student's velocity
moves from w = 1 to w = 4 as a share of how far the teacher's moves ("w share"; 0: the student
ignores w, 1: it follows the teacher), and its mean squared error to the guided teacher at w = 1
and w = 4. Only training images and the teacher are read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor, nn

from distill.core.conditioning import GUIDANCE, LABELS, conditioned, draw_guidance
from distill.core.prediction import fm_noise
from distill.data import DataModule
from distill.students.flow_map import student_from_teacher
from distill.students.guidance_input import guidance_groups, raise_guidance_lr, with_guidance_input
from distill.teachers import Teacher
from distill.teachers.checkpoint import load_teacher

KEYS = {"teacher", "steps", "scales", "lr", "batch", "dataset", "seed"}
PROBE_TIMES = (0.9, 0.5)
PROBE_SIZE = 256


def arguments(argv: list[str]) -> dict[str, str]:
    own = dict(arg.partition("=")[::2] for arg in argv)
    if unknown := set(own) - KEYS:
        raise SystemExit(f"unknown arguments {sorted(unknown)}; take {sorted(KEYS)} (python {__file__} --help)")
    if "teacher" not in own:
        raise SystemExit(f"give teacher=<a class-conditional teacher directory> (python {__file__} --help)")
    return own


def train(
    teacher: Teacher, images: Tensor, labels: Tensor, steps: int, lr: float, scale: float, batch: int
) -> nn.Module:
    """The teacher's copy with a w input, after ``steps`` of guided-velocity regression."""
    student = with_guidance_input(student_from_teacher(teacher.model), default_guidance=2.0)
    opt = torch.optim.Adam(guidance_groups(list(student.parameters()), student), lr=lr)
    raise_guidance_lr(opt, scale)  # as DistillModule.configure_optimizers does
    for _ in range(steps):
        rows = torch.randint(0, len(images), (batch,))
        x0, s = images[rows], torch.rand(batch)
        z = fm_noise(x0, torch.randn_like(x0), s)
        with conditioned({LABELS: labels[rows], GUIDANCE: draw_guidance(batch, 1.0, 4.0)}):
            with torch.no_grad():
                target = teacher(z, s)
            loss = (student(z, s) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return student


@torch.no_grad()
def probe(teacher: Teacher, student: nn.Module, classes: int, s: float) -> tuple[float, float, float]:
    """(w share, mse at w = 1, mse at w = 4) at FM time s on fixed noise, each class alike."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(PROBE_SIZE, *teacher.data_shape, generator=g)
    times, labels = torch.full((PROBE_SIZE,), s), torch.arange(PROBE_SIZE) % classes
    out = {}
    for w in (1.0, 4.0):
        with conditioned({LABELS: labels, GUIDANCE: torch.full((PROBE_SIZE,), w)}):
            out[w] = teacher(z, times), student(z, times)
    (t1, s1), (t4, s4) = out[1.0], out[4.0]
    share = ((s4 - s1).pow(2).mean().sqrt() / (t4 - t1).pow(2).mean().sqrt()).item()
    return share, (s1 - t1).pow(2).mean().item(), (s4 - t4).pow(2).mean().item()


def main(argv: list[str]) -> None:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    own = arguments(argv)
    teacher = load_teacher(Path(own["teacher"]).expanduser())
    classes = teacher.num_classes
    if not classes:
        raise SystemExit(f"teacher={own['teacher']} is not class-conditional (distill-pretrain conditional=true)")
    dm = DataModule(name=own.get("dataset", "fashion_mnist"), batch_size=1)
    dm.setup()
    images, labels = dm.train_tensor(), dm.train_labels()
    lr, batch = float(own.get("lr", "2e-4")), int(own.get("batch", "64"))
    head = " | ".join(f"s = {s}: w share, mse w=1, mse w=4" for s in PROBE_TIMES)
    print(f"| steps | lr scale | {head} |\n|---:|---:|" + "---|" * len(PROBE_TIMES), flush=True)
    for steps in (int(v) for v in own.get("steps", "30,150").split(",")):
        for scale in (float(v) for v in own.get("scales", "1,10,30,100").split(",")):
            torch.manual_seed(int(own.get("seed", "0")))
            student = train(teacher, images, labels, steps, lr, scale, batch)
            cells = [", ".join(f"{v:.3f}" for v in probe(teacher, student, classes, s)) for s in PROBE_TIMES]
            print(f"| {steps} | {scale:g} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
