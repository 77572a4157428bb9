"""LoRA students: which parameters train, zero change at init, shared teacher weights, clear errors."""

import pytest
import torch

from distill.lit.memory import module_memory_bytes
from distill.students.flow_map import student_from_teacher
from distill.students.lora import add_lora, lora_parameter_names, share_frozen_weights
from distill.students.momentum import MomentumStudent
from tests.methods.learning import tiny_unet_teacher

TARGETS = r".*(time_emb_proj|mid_block\..*conv\d)"


def test_only_adapters_and_named_heads_train_and_the_start_is_the_teacher():
    teacher = tiny_unet_teacher()
    student = MomentumStudent(student_from_teacher(teacher.model), components=2, bias_noise=0.0)
    add_lora(student, rank=2, alpha=2, targets=TARGETS, train_fully=["means.*", "logits.*", "rates.*"])
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable == set(lora_parameter_names(student)) | {
        f"{head}.{p}" for head in ("means", "logits", "rates") for p in ("weight", "bias")
    }
    assert any("mid_block" in n for n in trainable) and any("time_emb_proj" in n for n in trainable)
    x, s = torch.randn(2, 1, 8, 8), torch.rand(2)
    with torch.no_grad():
        torch.testing.assert_close(student(x, s), teacher(x, s), rtol=1e-5, atol=1e-5)  # LoRA's B starts at 0
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)
        assert not torch.allclose(student(x, s), teacher(x, s), atol=1e-4)


def test_frozen_weights_are_the_teachers_tensors():
    teacher = tiny_unet_teacher()
    student = add_lora(student_from_teacher(teacher.model), rank=2, alpha=2, targets=TARGETS)
    separate = module_memory_bytes(torch.nn.ModuleList([teacher.model, student]))
    shared = share_frozen_weights(student, teacher.model)
    assert shared == sum(p.numel() for p in teacher.model.parameters())  # every base weight, untouched so far
    teacher_ptrs = {p.data_ptr() for p in teacher.model.parameters()}
    assert all(p.data_ptr() in teacher_ptrs for p in student.parameters() if not p.requires_grad)
    assert (
        module_memory_bytes(torch.nn.ModuleList([teacher.model, student])) < 0.55 * separate
    )  # about one copy, plus adapters
    x, s = torch.randn(2, 1, 8, 8), torch.rand(2)
    with torch.no_grad():
        torch.testing.assert_close(student(x, s), teacher(x, s))


def test_targets_that_match_nothing_name_the_layers():
    with pytest.raises(ValueError, match="matched no layer.*conv_in"):
        add_lora(student_from_teacher(tiny_unet_teacher().model), rank=2, alpha=2, targets=["no_such_layer"])
