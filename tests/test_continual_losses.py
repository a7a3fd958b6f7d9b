"""ProNC's losses against float64 NumPy references written from their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncjax.continual import losses
from ncjax.continual.etf import random_etf

B, K, D = 16, 6, 8


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return {
        "logits": rng.standard_normal((B, K)) * 3,
        "labels": rng.integers(0, 4, B),  # classes 0..3 seen so far
        "features": rng.standard_normal((B, D)),
        "old_features": rng.standard_normal((B, D)) * 2,
        "vertices": random_etf(K, D, seed=1),
    }


def _ref_ce(logits, labels, mask):
    mask = np.broadcast_to(mask, logits.shape)
    out = []
    for z, y, m in zip(logits, labels, mask):
        competing = z[m]
        shift = competing.max()
        out.append(shift + np.log(np.sum(np.exp(competing - shift))) - z[y])
    return np.mean(out)


def _ref_dot_regression(h, t):
    h_hat = h / np.linalg.norm(h, axis=1, keepdims=True)
    return np.mean(0.5 * (np.sum(h_hat * t, 1) - 1.0) ** 2)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def test_cross_entropy_over_the_seen_classes(batch):
    seen = np.arange(K) < 4
    got = losses.masked_cross_entropy(_f32(batch["logits"]), batch["labels"], seen)
    np.testing.assert_allclose(got, _ref_ce(batch["logits"], batch["labels"], seen), rtol=1e-5)
    everything = losses.masked_cross_entropy(_f32(batch["logits"]), batch["labels"], np.ones(K, bool))
    np.testing.assert_allclose(everything, _ref_ce(batch["logits"], batch["labels"], np.ones(K, bool)), rtol=1e-5)
    assert everything > got  # more competitors, more loss


def test_cross_entropy_with_a_mask_per_sample(batch):
    task_of = np.arange(K) // 2
    mask = task_of[batch["labels"]][:, None] == task_of[None, :]  # task-incremental: own task's two classes
    got = losses.masked_cross_entropy(_f32(batch["logits"]), batch["labels"], mask)
    np.testing.assert_allclose(got, _ref_ce(batch["logits"], batch["labels"], mask), rtol=1e-5)


def test_cross_entropy_mask_wider_than_the_head(batch):
    """A mask over all classes applies to a narrower head (the targets grown so far)."""
    seen = np.arange(10) < 4
    narrow = batch["logits"][:, :5]
    got = losses.masked_cross_entropy(_f32(narrow), batch["labels"], seen)
    np.testing.assert_allclose(got, _ref_ce(narrow, batch["labels"], seen[:5]), rtol=1e-5)


def test_masked_logits_get_no_gradient(batch):
    seen = np.arange(K) < 4
    grad = jax.grad(losses.masked_cross_entropy)(_f32(batch["logits"]), batch["labels"], seen)
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[:, 4:] == 0)


def test_alignment_is_dot_regression_onto_the_class_vertex(batch):
    h, y, v = batch["features"], batch["labels"], batch["vertices"]
    got = losses.alignment_loss(_f32(h), y, _f32(v))
    np.testing.assert_allclose(got, _ref_dot_regression(h, v[y]), rtol=1e-5)
    cosine = np.sum(_unit(h) * v[y], 1)
    np.testing.assert_allclose(got, np.mean(0.5 * (1 - cosine) ** 2), rtol=1e-5)


def test_alignment_is_zero_on_the_vertices_whatever_the_scale(batch):
    v, y = batch["vertices"], batch["labels"]
    scales = np.linspace(0.1, 10, B)[:, None]
    assert float(losses.alignment_loss(_f32(scales * v[y]), y, _f32(v))) < 1e-12


def test_distillation_is_dot_regression_between_normalised_features(batch):
    h, old = batch["features"], batch["old_features"]
    got = losses.distillation_loss(_f32(h), _f32(old))
    np.testing.assert_allclose(got, _ref_dot_regression(h, _unit(old)), rtol=1e-5)
    np.testing.assert_allclose(losses.distillation_loss(_f32(old), _f32(3 * old)), 0.0, atol=1e-7)


def test_distillation_does_not_train_the_previous_model(batch):
    grad_old = jax.grad(losses.distillation_loss, argnums=1)(_f32(batch["features"]), _f32(batch["old_features"]))
    assert np.all(np.asarray(grad_old) == 0)


def test_etf_logits_are_cosines_and_rank_like_the_papers_scores(batch):
    h, v = batch["features"], batch["vertices"]
    got = np.asarray(losses.etf_logits(_f32(h), _f32(v)))
    np.testing.assert_allclose(got, _unit(h) @ v.T, atol=1e-6)
    np.testing.assert_array_equal(got.argmax(1), (h @ v.T).argmax(1))  # the paper's ProNC scores ⟨h, v_c⟩


def test_fixed_etf_cross_entropy_scores_the_raw_features_against_the_frozen_etf(batch):
    """The NCT-style baseline: CE of the logits ⟨h, v_c⟩ over the seen classes; the features get the CE
    gradient Σ_c (p_c − 1[c = y]) v_c / B, the ETF none (it is fixed, not learned)."""
    h, y, v = batch["features"], batch["labels"], batch["vertices"]
    seen = np.arange(K) < 4

    def loss(features, vertices):
        return losses.masked_cross_entropy(losses.fixed_etf_logits(features, vertices), y, seen)

    np.testing.assert_allclose(loss(_f32(h), _f32(v)), _ref_ce(h @ v.T, y, seen), rtol=1e-5)
    grad_h, grad_v = jax.grad(loss, argnums=(0, 1))(_f32(h), _f32(v))
    z = h @ v[:4].T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(B), y] -= 1.0
    np.testing.assert_allclose(grad_h, p @ v[:4] / B, atol=1e-6)
    assert np.all(np.asarray(grad_v) == 0)


def test_zero_feature_gives_finite_losses_and_gradients():
    h = jnp.zeros((2, 3))
    v = jnp.asarray(random_etf(2, 3, seed=0), jnp.float32)
    loss, grad = jax.value_and_grad(losses.alignment_loss)(h, jnp.array([0, 1]), v)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))


def test_continual_loss_is_the_weighted_sum_of_the_terms(batch):
    seen = np.arange(K) < 4
    weights = losses.LossWeights(ce=1.0, align=18.0, distill=170.0)  # the paper's Seq-CIFAR-100 weights
    total, terms = losses.continual_loss(
        weights, batch["labels"], logits=_f32(batch["logits"]), logit_mask=seen,
        features=_f32(batch["features"]), vertices=_f32(batch["vertices"]),
        old_features=_f32(batch["old_features"]),
    )
    h, y = batch["features"], batch["labels"]
    expected = (
        _ref_ce(batch["logits"], y, seen)
        + 18.0 * _ref_dot_regression(h, batch["vertices"][y])
        + 170.0 * _ref_dot_regression(h, _unit(batch["old_features"]))
    )
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    assert set(terms) == {"ce", "align", "distill"}


def test_baselines_are_the_same_function_with_other_inputs(batch):
    finetune, terms = losses.continual_loss(
        losses.LossWeights(ce=1.0), batch["labels"], logits=_f32(batch["logits"]), logit_mask=np.arange(K) < 4
    )
    assert set(terms) == {"ce"}
    np.testing.assert_allclose(finetune, _ref_ce(batch["logits"], batch["labels"], np.arange(K) < 4), rtol=1e-5)
    fixed_etf, terms = losses.continual_loss(
        losses.LossWeights(ce=0.0, align=1.0), batch["labels"],
        features=_f32(batch["features"]), vertices=_f32(batch["vertices"]),
    )
    assert set(terms) == {"align"}
    np.testing.assert_allclose(
        fixed_etf, _ref_dot_regression(batch["features"], batch["vertices"][batch["labels"]]), rtol=1e-5
    )


def test_a_weighted_term_without_its_inputs_is_an_error(batch):
    with pytest.raises(ValueError, match="distill=1.0 but the inputs of the 'distill' term"):
        losses.continual_loss(
            losses.LossWeights(ce=1.0, distill=1.0), batch["labels"],
            logits=_f32(batch["logits"]), logit_mask=np.ones(K, bool),
        )


def test_jit_and_vmap_over_seeds_and_weights(batch):
    """The engine vmaps a step over seeds (and may over loss weights): traced weights must work."""
    seen = jnp.arange(K) < 4
    def step_loss(align_weight, features):
        weights = losses.LossWeights(ce=1.0, align=align_weight, distill=0.0)
        return losses.continual_loss(
            weights, batch["labels"], logits=_f32(batch["logits"]), logit_mask=seen,
            features=features, vertices=_f32(batch["vertices"]),
        )[0]
    features = jnp.stack([_f32(batch["features"]), -_f32(batch["features"])])
    align_weights = jnp.array([0.5, 2.0])
    got = jax.jit(jax.vmap(step_loss))(align_weights, features)
    for i in range(2):
        h = np.asarray(features[i], np.float64)
        expected = _ref_ce(batch["logits"], batch["labels"], np.asarray(seen)) + float(align_weights[i]) * (
            _ref_dot_regression(h, batch["vertices"][batch["labels"]])
        )
        np.testing.assert_allclose(got[i], expected, rtol=1e-5)
