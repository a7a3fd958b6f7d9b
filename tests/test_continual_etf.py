"""ProNC's ETF targets against the definition of a simplex ETF and independent optimality references."""

import numpy as np
import pytest

from ncjax.continual import etf
from ncjax.errors import ConfigError


def _etf_gram(k):
    return np.where(np.eye(k, dtype=bool), 1.0, -1.0 / (k - 1))


def _assert_simplex_etf(v, k, atol=1e-12):
    assert v.shape[0] == k
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=atol)
    np.testing.assert_allclose(v @ v.T, _etf_gram(k), atol=atol)


def _random_orthonormal_rows(rng, rows, dim):
    q, r = np.linalg.qr(rng.standard_normal((dim, rows)))
    return (q * np.sign(np.diag(r))).T  # Haar-distributed


def _basis_of_ones_complement(k):
    """An orthonormal basis of 1^⊥ by QR (not Helmert's), columns of [k, k−1]."""
    q = np.linalg.qr(np.column_stack([np.ones(k), np.eye(k)[:, : k - 1]]))[0]
    return q[:, 1:]


def _random_etf(rng, k, dim):
    """A uniformly rotated simplex ETF: sqrt(K/(K−1)) Φ R, Φ from QR, R Haar."""
    return np.sqrt(k / (k - 1)) * _basis_of_ones_complement(k) @ _random_orthonormal_rows(rng, k - 1, dim)


def _brute_force_minimum(cost, rng, k, dim):
    """min of ``cost`` over ETF(k, dim): random search, then hill climbing by ever smaller random rotations."""
    best = min((_random_etf(rng, k, dim) for _ in range(2000)), key=cost)
    best_cost = cost(best)
    for step in (0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003):
        for _ in range(200):
            q, r = np.linalg.qr(np.eye(dim) + step * rng.standard_normal((dim, dim)))
            candidate = best @ (q * np.sign(np.diag(r)))  # a rotation close to the identity
            if cost(candidate) < best_cost:
                best, best_cost = candidate, cost(candidate)
    return best_cost


def _unit_centred(means):
    c = means - means.mean(0)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


# ------------------------------------------------------------------ nearest ETF (first task)


@pytest.mark.parametrize("k,dim", [(2, 1), (2, 5), (3, 2), (5, 4), (5, 16), (10, 64)])
def test_nearest_etf_is_a_simplex_etf(k, dim):
    means = np.random.default_rng(k * 100 + dim).standard_normal((k, dim)) * 3 + 1
    _assert_simplex_etf(etf.nearest_etf(means), k)


def test_nearest_etf_returns_class_means_that_already_form_an_etf():
    rng = np.random.default_rng(0)
    k, dim = 4, 7
    target = _random_etf(rng, k, dim)
    means = 5.0 * target + rng.standard_normal(dim)  # rescaled and shifted: the same directions once centred
    np.testing.assert_allclose(etf.nearest_etf(means), target, atol=1e-12)


@pytest.mark.parametrize("k,dim", [(3, 2), (3, 3), (4, 3)])
def test_nearest_etf_beats_a_brute_force_search(k, dim):
    rng = np.random.default_rng(k + dim)
    means = rng.standard_normal((k, dim))
    unit = _unit_centred(means)
    cost = lambda v: np.sum((v - unit) ** 2)  # noqa: E731
    ours = cost(etf.nearest_etf(means))
    best = _brute_force_minimum(cost, rng, k, dim)
    assert ours <= best + 1e-12
    assert best - ours < 1e-4  # the search gets there: the optimum is attained, not just bounded


def test_nearest_etf_matches_the_papers_construction():
    """The paper's code (column form, D ≥ K): U = polar(Ûᵀ P_K), E = √(K/(K−1)) U P_K."""
    rng = np.random.default_rng(2)
    k, dim = 5, 9
    means = rng.standard_normal((k, dim))
    centring = np.eye(k) - 1.0 / k
    a, _, bt = np.linalg.svd(_unit_centred(means).T @ centring, full_matrices=False)
    papers = (np.sqrt(k / (k - 1)) * (a @ bt) @ centring).T
    np.testing.assert_allclose(etf.nearest_etf(means), papers, atol=1e-12)


def test_nearest_etf_is_rotation_equivariant():
    rng = np.random.default_rng(3)
    means = rng.standard_normal((5, 6))
    rotation = _random_orthonormal_rows(rng, 6, 6)
    np.testing.assert_allclose(etf.nearest_etf(means @ rotation), etf.nearest_etf(means) @ rotation, atol=1e-10)


# ------------------------------------------------------------------ growth (every new task)


@pytest.mark.parametrize("k,num_new,dim", [(2, 1, 2), (2, 2, 3), (3, 1, 3), (3, 4, 6), (5, 5, 9), (10, 10, 64)])
def test_grown_etf_is_a_simplex_etf_over_all_classes(k, num_new, dim):
    old = _random_etf(np.random.default_rng(k), k, dim)
    grown = etf.grow_etf(old, num_new, seed=7)
    _assert_simplex_etf(grown, k + num_new)
    np.testing.assert_allclose(grown.sum(0), 0.0, atol=1e-12)


@pytest.mark.parametrize("k,num_new,dim", [(2, 1, 3), (3, 2, 5), (4, 4, 8), (6, 2, 7)])
def test_new_vertices_are_orthogonal_to_the_old_ones(k, num_new, dim):
    old = _random_etf(np.random.default_rng(k), k, dim)
    grown = etf.grow_etf(old, num_new, seed=1)
    np.testing.assert_allclose(grown[k:] @ old.T, 0.0, atol=1e-12)


def _nuclear_norm_minimal_movement(old, k_new):
    """min over V' ∈ ETF(K', D) of Σ_{c≤K} ‖v'_c − v_c‖², as a Procrustes problem over R in V' = c'ΦR.

    Σ‖v'_c − v_c‖² = 2K − 2c' tr(R (Φ_{:K})ᵀ V), whose max over orthonormal rows R is
    the nuclear norm of (Φ_{:K})ᵀ V (von Neumann): independent of the module's closed form.
    """
    k = old.shape[0]
    phi = _basis_of_ones_complement(k_new)
    nuclear = np.linalg.svd(phi[:k].T @ old, compute_uv=False).sum()
    return 2 * k - 2 * np.sqrt(k_new / (k_new - 1)) * nuclear


@pytest.mark.parametrize("k,num_new,dim", [(2, 1, 2), (2, 3, 4), (3, 2, 4), (5, 5, 10), (10, 10, 32)])
def test_growth_moves_the_old_vertices_as_little_as_possible(k, num_new, dim):
    old = _random_etf(np.random.default_rng(10 * k + num_new), k, dim)
    grown = etf.grow_etf(old, num_new, seed=0)
    movement = np.sum((grown[:k] - old) ** 2)
    np.testing.assert_allclose(movement, _nuclear_norm_minimal_movement(old, k + num_new), atol=1e-12)


@pytest.mark.parametrize("k,num_new,dim", [(2, 1, 2), (2, 1, 3), (3, 1, 3)])
def test_growth_beats_a_brute_force_search_over_etfs(k, num_new, dim):
    rng = np.random.default_rng(k + num_new + dim)
    old = _random_etf(rng, k, dim)
    k_new = k + num_new
    cost = lambda v: np.sum((v[:k] - old) ** 2)  # noqa: E731
    ours = cost(etf.grow_etf(old, num_new, seed=3))
    best = _brute_force_minimum(cost, rng, k_new, dim)
    assert ours <= best + 1e-12
    assert best - ours < 1e-4


def test_growth_matches_the_papers_construction_in_movement():
    """The paper's code: E = √(K/(K−1)) U P_K (columns), grown by appending columns orthogonal to U."""
    rng = np.random.default_rng(5)
    k, num_new, dim = 4, 3, 12
    u = _random_orthonormal_rows(rng, k + num_new, dim).T  # [D, K'] orthonormal columns
    def column_etf(columns):
        m = columns.shape[1]
        return (np.sqrt(m / (m - 1)) * columns @ (np.eye(m) - 1.0 / m)).T  # rows are classes
    old, papers = column_etf(u[:, :k]), column_etf(u)
    ours = etf.grow_etf(old, num_new, seed=9)
    np.testing.assert_allclose(np.sum((ours[:k] - old) ** 2), np.sum((papers[:k] - old) ** 2), atol=1e-12)


def test_repeated_growth_over_five_tasks_keeps_every_invariant():
    rng = np.random.default_rng(11)
    dim, per_task = 16, 2
    targets = etf.nearest_etf(rng.standard_normal((per_task, dim)))
    for task in range(1, 5):
        previous = targets
        targets = etf.grow_etf(previous, per_task, seed=(0, task))
        _assert_simplex_etf(targets, per_task * (task + 1), atol=1e-11)
        np.testing.assert_allclose(
            np.sum((targets[: len(previous)] - previous) ** 2),
            _nuclear_norm_minimal_movement(previous, len(targets)),
            atol=1e-11,
        )


def test_growth_is_deterministic_given_the_seed():
    old = _random_etf(np.random.default_rng(0), 3, 8)
    a = etf.grow_etf(old, 2, seed=(4, 1))
    np.testing.assert_array_equal(a, etf.grow_etf(old, 2, seed=(4, 1)))
    b = etf.grow_etf(old, 2, seed=(4, 2))
    assert not np.allclose(a[3:], b[3:])  # the free directions differ ...
    np.testing.assert_allclose(np.sum((a[:3] - old) ** 2), np.sum((b[:3] - old) ** 2), atol=1e-12)  # ... not the cost


def test_growth_rejects_targets_that_are_not_an_etf():
    with pytest.raises(ValueError, match="not a simplex ETF"):
        etf.grow_etf(np.random.default_rng(0).standard_normal((3, 5)), 1, seed=0)


def test_growth_accepts_float32_targets():
    old = _random_etf(np.random.default_rng(0), 4, 6).astype(np.float32)
    _assert_simplex_etf(etf.grow_etf(old, 2, seed=0), 6, atol=1e-6)


# ------------------------------------------------------------------ widths, fixed ETF


def test_width_requirements_are_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"11 vertices needs feature width >= 10, got 8") as info:
        etf.grow_etf(_random_etf(np.random.default_rng(0), 5, 8), 6, seed=0)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"4 vertices needs feature width >= 3, got 2"):
        etf.nearest_etf(np.ones((4, 2)))
    with pytest.raises(ConfigError, match="at least 2 vertices"):
        etf.nearest_etf(np.ones((1, 4)))
    with pytest.raises(ConfigError, match=r"feature width >= 9"):
        etf.random_etf(10, 8, seed=0)
    # The boundary D = K' − 1 is enough.
    _assert_simplex_etf(etf.grow_etf(_random_etf(np.random.default_rng(0), 5, 9), 5, seed=0), 10)


@pytest.mark.parametrize("k,dim", [(2, 1), (10, 9), (10, 512), (100, 128)])
def test_random_etf_is_a_deterministic_simplex_etf(k, dim):
    v = etf.random_etf(k, dim, seed=3)
    _assert_simplex_etf(v, k, atol=1e-11)
    np.testing.assert_array_equal(v, etf.random_etf(k, dim, seed=3))
    assert not np.allclose(v, etf.random_etf(k, dim, seed=4))
