"""Bezier curves: basis, positions, velocities and least-squares control points, in float64."""

import pytest
import torch

from distill.core.bezier import bernstein, bezier, bezier_velocity, fit_interior


def control_points(degree: int, batch: int = 5, shape=(2, 3)) -> torch.Tensor:
    return torch.randn(degree + 1, batch, *shape, generator=torch.Generator().manual_seed(degree), dtype=torch.float64)


def test_bernstein_is_a_partition_of_unity_with_the_binomial_weights():
    tau = torch.linspace(0, 1, 11, dtype=torch.float64)
    basis = bernstein(3, tau)
    torch.testing.assert_close(basis.sum(1), torch.ones(11, dtype=torch.float64))
    t = tau[4]
    torch.testing.assert_close(basis[4], torch.stack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3]))


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_curve_starts_and_ends_at_the_end_points(degree):
    points = control_points(degree)
    ones = torch.ones(5, dtype=torch.float64)
    torch.testing.assert_close(bezier(points, 0 * ones), points[0])
    torch.testing.assert_close(bezier(points, ones), points[-1])


def test_degree_one_is_the_straight_line_and_its_chord():
    points = control_points(1)
    tau = torch.rand(5, dtype=torch.float64)
    t = tau[:, None, None]
    torch.testing.assert_close(bezier(points, tau), (1 - t) * points[0] + t * points[1])
    torch.testing.assert_close(bezier_velocity(points, tau), (points[1] - points[0]).expand(5, 2, 3))


def test_quadratic_matches_de_casteljau():
    points = control_points(2)
    tau = torch.rand(5, dtype=torch.float64)
    t = tau[:, None, None]
    a, b = (1 - t) * points[0] + t * points[1], (1 - t) * points[1] + t * points[2]
    torch.testing.assert_close(bezier(points, tau), (1 - t) * a + t * b)


@pytest.mark.parametrize("degree", [2, 3])
def test_velocity_is_the_derivative_of_the_position(degree):
    points = control_points(degree)
    tau, h = torch.rand(5, dtype=torch.float64) * 0.8 + 0.1, 1e-6
    central = (bezier(points, tau + h) - bezier(points, tau - h)) / (2 * h)
    torch.testing.assert_close(bezier_velocity(points, tau), central, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("degree", [2, 3, 4])
def test_least_squares_recovers_the_control_points_of_a_sampled_curve(degree):
    points = control_points(degree)
    tau = torch.linspace(0.1, 0.9, 7, dtype=torch.float64)
    samples = torch.stack([bezier(points, t.expand(5)) for t in tau])
    torch.testing.assert_close(fit_interior(points[0], points[-1], tau, samples, degree), points[1:-1])


def test_least_squares_of_repeated_times_fits_the_mean_trajectory():
    """Two teachers sampled at the same times: the joint fit is the fit of their average."""
    points = control_points(2)
    tau = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    first = torch.stack([bezier(points, t.expand(5)) for t in tau])
    second = first + torch.randn_like(first)
    joint = fit_interior(points[0], points[-1], tau.repeat(2), torch.cat([first, second]), 2)
    torch.testing.assert_close(joint, fit_interior(points[0], points[-1], tau, (first + second) / 2, 2))

    # ... and it is the least-squares optimum: any perturbation of P_1 raises the squared error.
    def error(interior):
        curve = torch.cat([points[:1], interior, points[2:]])
        fitted = torch.stack([bezier(curve, t.expand(5)) for t in tau.repeat(2)])
        return (fitted - torch.cat([first, second])).pow(2).sum()

    assert error(joint) < error(joint + 1e-3 * torch.randn_like(joint))


def test_degree_one_has_no_interior_and_too_few_times_are_refused():
    points = control_points(3)
    assert fit_interior(points[0], points[-1], torch.tensor([0.5]), points[1:2], 1).shape == (0, 5, 2, 3)
    with pytest.raises(ValueError, match="2 interior control points"):
        fit_interior(points[0], points[-1], torch.tensor([0.5, 0.5], dtype=torch.float64), points[1:3], 3)
