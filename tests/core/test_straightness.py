"""Straightness metric on analytic fields, and the sharded (noise, endpoint) pair cache."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from distill.core.grids import uniform_grid
from distill.core.pairs import PairCacheError, PairShards, fingerprint, shard_labels, shard_noise
from distill.core.straightness import ode_pairs, ode_states, straightness


def test_constant_velocity_is_perfectly_straight():
    u = torch.tensor([0.7, -1.3], dtype=torch.float64)
    noise = torch.randn(16, 2, dtype=torch.float64)
    for sampler in ("euler", "heun"):
        assert straightness(lambda x, s: u.expand_as(x), noise, uniform_grid(8), sampler).abs() < 1e-20


def test_curved_path_matches_the_analytic_value():
    """v = 2 s u gives x_s = x_1 - u (1 - s^2): chord u, S = |u|^2 int_0^1 (1 - 2s)^2 ds = |u|^2 / 3."""
    u = torch.tensor([1.0, 2.0], dtype=torch.float64)
    noise = torch.randn(4, 2, dtype=torch.float64)
    field = lambda x, s: 2 * s[:, None] * u  # noqa: E731
    value = straightness(field, noise, uniform_grid(200), "heun")
    assert value.item() == pytest.approx(5 / 3, rel=1e-3)
    assert straightness(field, noise, uniform_grid(200), "euler").item() == pytest.approx(5 / 3, rel=1e-2)


def test_ode_pairs_are_the_sampler_endpoints():
    u = torch.tensor([0.5, 0.5], dtype=torch.float64)
    noise = torch.randn(3, 2, dtype=torch.float64)
    torch.testing.assert_close(ode_pairs(lambda x, s: u.expand_as(x), noise, 4), noise - u)


def counting_endpoint():
    calls = []

    def endpoint(noise):
        calls.append(len(noise))
        return 2 * noise + 1

    return endpoint, calls


def test_pair_cache_round_trip_and_resume_without_regeneration(tmp_path: Path):
    endpoint, calls = counting_endpoint()
    shards = PairShards(tmp_path, 8, (3,), 7, endpoint)
    noise, x_hat = shards[2]
    torch.testing.assert_close(noise, shard_noise(7, 2, 8, (3,)))
    torch.testing.assert_close(x_hat, 2 * noise + 1)
    shards[2]
    assert calls == [8] and (tmp_path / "shard_00002.safetensors").is_file()
    # A resumed run (a new cache on the same directory) reads the shard back, identical.
    resumed, resumed_calls = counting_endpoint()
    again = PairShards(tmp_path, 8, (3,), 7, resumed)[2]
    assert resumed_calls == []
    torch.testing.assert_close(again[1], x_hat)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries
    assert not torch.equal(shard_noise(7, 3, 8, (3,)), noise)  # each shard has its own noise


def test_labelled_pairs_round_trip_and_a_resume_keeps_their_labels(tmp_path: Path):
    solved = []

    def endpoint(noise, labels):
        solved.append(labels.clone())
        return noise + labels.view(-1, 1).float()  # an endpoint that depends on the label

    shards = PairShards(tmp_path, 8, (3,), 7, endpoint, num_labels=5)
    noise, x_hat = shards[1]
    labels = shards.labels(1)
    assert labels.dtype == torch.long and torch.equal(labels, shard_labels(7, 1, 8, 5)) and len(solved) == 1
    torch.testing.assert_close(x_hat, noise + labels.view(-1, 1).float())
    assert torch.equal(load_file(tmp_path / "shard_00001.safetensors")["labels"], labels)  # stored in the shard
    # A resumed run reads shard 1 back with its labels and makes shard 2 as an uninterrupted run would.
    resumed = PairShards(tmp_path, 8, (3,), 7, lambda noise, labels: noise + labels.view(-1, 1).float(), num_labels=5)
    assert torch.equal(resumed.labels(1), labels) and torch.equal(resumed[1][1], x_hat)
    assert torch.equal(resumed.labels(2), shard_labels(7, 2, 8, 5))  # the labels an uninterrupted run draws
    assert torch.equal(shards.labels(2), resumed.labels(2)) and len(solved) == 1  # read back, not solved again
    with pytest.raises(PairCacheError, match="other labels"):
        PairShards(tmp_path, 8, (3,), 7, endpoint, num_labels=4)[1]
    PairShards(tmp_path / "plain", 8, (3,), 7, lambda noise: 2 * noise)[0]  # unlabelled pairs of the same noise
    with pytest.raises(PairCacheError, match="with labels"):
        PairShards(tmp_path / "plain", 8, (3,), 7, endpoint, num_labels=5)[0]


def test_corrupt_or_foreign_shard_names_the_file_and_the_fix(tmp_path: Path):
    endpoint, _ = counting_endpoint()
    PairShards(tmp_path, 8, (3,), 7, endpoint)[0]
    path = tmp_path / "shard_00000.safetensors"
    with pytest.raises(PairCacheError, match="other noise.*delete it"):
        PairShards(tmp_path, 8, (3,), 8, endpoint)[0]
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(PairCacheError, match=r"shard_00000\.safetensors is unreadable.*delete it"):
        PairShards(tmp_path, 8, (3,), 7, endpoint)[0]


def test_fingerprint_tells_models_apart():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert fingerprint(a, (2,), 0) == fingerprint(a, (2,), 0)
    assert fingerprint(a, (2,), 0) != fingerprint(b, (2,), 0)
    assert fingerprint(a, (2,), 0) != fingerprint(a, (2,), 1)


def test_ode_states_land_exactly_on_the_record_times():
    u = torch.tensor([0.7, -1.3], dtype=torch.float64)
    noise = torch.randn(5, 2, dtype=torch.float64)
    states = ode_states(lambda x, s: u.expand_as(x), noise, [0.9, 0.3, 0.0], 4, "heun", "cosine")
    expected = torch.stack([noise - (1 - t) * u for t in (0.9, 0.3, 0.0)])  # x_s = eps - (1 - s) u
    torch.testing.assert_close(states, expected)
    # Times already on the grid leave the solve as it was: the endpoint is the plain ODE pair.
    field = lambda x, s: x * s[:, None] ** 2  # noqa: E731
    torch.testing.assert_close(ode_states(field, noise, [0.5, 0.0], 4, "heun")[1], ode_pairs(field, noise, 4, "heun"))
    with pytest.raises(ValueError, match="must lie in"):
        ode_states(field, noise, [1.0], 4)


def test_pair_shards_hold_endpoints_of_another_shape(tmp_path: Path):
    shards = PairShards(tmp_path, 4, (3,), 7, lambda noise: noise[:, None].repeat(1, 2, 1), target_shape=(2, 3))
    noise, states = shards[0]
    assert states.shape == (4, 2, 3)
    again = PairShards(tmp_path, 4, (3,), 7, lambda noise: 1 / 0, target_shape=(2, 3))[0]
    torch.testing.assert_close(again[1], states)
    with pytest.raises(PairCacheError, match=r"pairs of shape \(3, 3\)"):
        PairShards(tmp_path, 4, (3,), 7, lambda noise: noise, target_shape=(3, 3))[0]
