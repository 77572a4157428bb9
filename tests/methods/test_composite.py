"""WeightedSum (rCM = sCM + lambda DMD): the loss is the weighted sum of the terms' own losses,
optimizers are the union, one term schedules and one samples, checkpoints route to their term."""

import copy

import pytest
import torch

from distill.methods import DMD2, SCM, WeightedSum
from distill.nets.mlp import TimeMLP
from distill.nets.velocity import VelocityModel
from distill.teachers import Teacher


def rcm(weights=None) -> WeightedSum:
    return WeightedSum(
        terms={
            "scm": SCM(jvp="finite_difference", fd_step=0.1),
            "dmd": DMD2(generator_times=[0.98, 0.5], fake_updates_per_generator=5),
        },
        weights=weights or {"scm": 1.0, "dmd": 0.02},
        sampler="scm",
        schedule="dmd",
        name="rcm",
    )


def setup(method):
    torch.manual_seed(0)
    teacher = Teacher(VelocityModel(TimeMLP((2,), width=16, depth=1)), (2,))
    student = copy.deepcopy(teacher.model).requires_grad_(True)
    method.attach(teacher, student)
    return teacher, student


def test_loss_is_the_weighted_sum_of_the_terms_losses():
    method = rcm({"scm": 1.0, "dmd": 0.25})
    teacher, student = setup(method)
    x0 = torch.randn(32, 2)
    torch.manual_seed(3)
    total = method.loss("student", x0, teacher, student, step=7)
    torch.manual_seed(3)  # the same random draws, term by term in order
    scm = method.terms["scm"].loss("student", x0, teacher, student, 7)["loss"]
    dmd = method.terms["dmd"].loss("student", x0, teacher, student, 7)["loss"]
    torch.testing.assert_close(total["loss"], scm + 0.25 * dmd)
    assert {"scm_mse", "dmd_dm"} <= set(total)


def test_only_the_owning_terms_enter_a_phase():
    method = rcm()
    teacher, student = setup(method)
    torch.manual_seed(1)
    fake = method.loss("fake_score", torch.randn(8, 2), teacher, student, 0)
    assert set(fake) == {"loss", "dmd_loss", "dmd_score"}


def test_optimizers_are_the_union_and_the_schedule_is_dmds():
    method = rcm()
    teacher, student = setup(method)
    assert method.optimizer_names == ("student", "fake_score")
    assert [tuple(method.phases(s)) for s in range(6)] == [("fake_score", "student")] + [("fake_score",)] * 4 + [
        ("fake_score", "student")
    ]
    student_params = {id(p) for p in method.trainable_parameters("student", student)}
    assert {id(p) for p in method.terms["scm"].weighting.parameters()} <= student_params  # sCM's w_phi
    assert {id(p) for p in student.parameters()} <= student_params
    fake = {id(p) for p in method.trainable_parameters("fake_score", student)}
    assert fake == {id(p) for p in method.terms["dmd"].fake_score.parameters()}
    assert method.lr_scale("fake_score", 0) == method.terms["dmd"].lr_scale("fake_score", 0)


def test_sampling_is_the_sampler_terms():
    method = rcm()
    _, student = setup(method)
    noise = torch.randn(5, 2)
    assert method.supported_nfes([1, 2, 4, 8]) == [1, 2, 4]
    torch.manual_seed(2)
    ours = method.sample(student, noise, 2)
    torch.manual_seed(2)
    torch.testing.assert_close(ours, method.terms["scm"].sample(student, noise, 2))


def test_checkpoint_keys_route_to_their_term():
    method = rcm()
    setup(method)
    keys = method.state_dict().keys()
    assert any(k.startswith("terms.dmd.fake_score.") for k in keys)
    assert any(k.startswith("terms.scm.weighting.") for k in keys)


def test_unknown_term_names_are_refused():
    with pytest.raises(ValueError, match="not among the terms"):
        WeightedSum(terms={"scm": SCM()}, weights={"dmd": 1.0})
    with pytest.raises(ValueError, match="not among the terms"):
        WeightedSum(terms={"scm": SCM()}, sampler="dmd")
    with pytest.raises(ValueError, match="empty"):
        WeightedSum(terms={})


def rcm_with_warmup(warmup=10) -> WeightedSum:
    return WeightedSum(
        terms={
            "scm": SCM(jvp="finite_difference", fd_step=0.1, adaptive_weighting=False),
            "dmd": DMD2(generator_times=[0.98, 0.5], fake_updates_per_generator=5),
        },
        weights={"scm": 1.0, "dmd": 0.02},
        sampler="scm",
        schedule="dmd",
        name="rcm",
        warmup=warmup,
        warmup_terms=["scm"],
    )


def test_warmup_trains_only_the_warmup_terms_then_follows_the_schedule_from_its_end():
    """rCM: sCM alone on every iteration while iteration < tangent_warmup, then sCM + DMD with the
    student every 5th iteration counted from there (t2v_model_distill_rcm.py:294-299, 709)."""
    method = rcm_with_warmup(warmup=10)
    teacher, student = setup(method)
    assert [tuple(method.phases(s)) for s in (0, 9)] == [("student",)] * 2
    assert [tuple(method.phases(s)) for s in range(10, 16)] == [("fake_score", "student")] + [("fake_score",)] * 4 + [
        ("fake_score", "student")
    ]
    x0 = torch.randn(16, 2)
    torch.manual_seed(0)
    during = method.loss("student", x0, teacher, student, step=3)
    assert not any(k.startswith("dmd_") for k in during)
    torch.manual_seed(0)
    torch.testing.assert_close(during["loss"], method.terms["scm"].loss("student", x0, teacher, student, 3)["loss"])
    after = method.loss("student", x0, teacher, student, step=10)
    assert "dmd_dm" in after


def test_fractional_warmup_follows_the_budget_and_bad_values_are_refused():
    method = rcm_with_warmup(warmup=0.2)
    method.set_budget(50)
    assert tuple(method.phases(9)) == ("student",) and tuple(method.phases(10)) == ("fake_score", "student")
    with pytest.raises(ValueError, match="warmup_terms"):
        WeightedSum(terms={"scm": SCM()}, warmup=5)
    with pytest.raises(ValueError, match="not among the terms"):
        WeightedSum(terms={"scm": SCM()}, warmup=5, warmup_terms=["dmd"])
    with pytest.raises(ValueError, match="warmup"):
        WeightedSum(terms={"scm": SCM()}, warmup=-1, warmup_terms=["scm"])
