"""Memory figures: parameters and buffers counted by storage, shared tensors once."""

import torch
from torch import nn

from distill.lit.memory import MIB, module_memory_bytes, peak_memory_bytes
from tests.helpers.modules import make_module


def test_parameters_and_buffers_are_counted_by_their_bytes():
    assert module_memory_bytes(nn.Linear(3, 4)) == (12 + 4) * 4
    assert module_memory_bytes(nn.Linear(3, 4).double()) == (12 + 4) * 8
    # BatchNorm: weight, bias, running mean and var (float32) and num_batches_tracked (int64).
    assert module_memory_bytes(nn.BatchNorm1d(4)) == 4 * 4 * 4 + 8
    assert module_memory_bytes(nn.Linear(3, 4), nn.BatchNorm1d(4)) == 64 + 72


def test_shared_tensors_count_once():
    a, b = nn.Linear(3, 4), nn.Linear(3, 4)
    b.weight = a.weight  # tied weights
    assert module_memory_bytes(a, b) == 64 + 4 * 4
    assert module_memory_bytes(a, a) == module_memory_bytes(nn.Sequential(a, a)) == 64
    c = nn.Linear(3, 4)
    c.register_buffer("view", c.weight.detach()[:2])  # a view of a parameter's storage
    assert module_memory_bytes(c) == 64


def test_distill_module_holds_teacher_student_and_ema():
    module = make_module()  # PD has no networks before its first round: only its counters
    one, counters = module_memory_bytes(module.teacher), module_memory_bytes(module.method)
    assert counters < 64
    assert module_memory_bytes(module) == 3 * one + counters + module.step_count.nbytes


def test_cpu_peak_is_the_process_peak_rss():
    big = torch.ones(64 * MIB // 4)  # 64 MiB, touched
    assert peak_memory_bytes(torch.device("cpu")) > big.nbytes
