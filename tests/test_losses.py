"""The fused, chunked cross-entropy against the plain logits path (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.losses import cross_entropy_sums, fused_cross_entropy_sums, rdrop_cross_entropy_sums


def numpy_sums(h, kernel, bias, targets, weights, eps):
  """Label-smoothed cross-entropy straight from the definition, in float64."""
  logits = np.asarray(h, np.float64) @ np.asarray(kernel, np.float64).T
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  vocab = logits.shape[-1]
  target = (1 - eps) * np.eye(vocab)[targets] + eps / vocab
  loss = -(target * logp).sum(-1)
  nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
  correct = logits.argmax(-1) == targets
  return (loss * weights).sum(), (nll * weights).sum(), (correct * weights).sum()


def problem(seed=0, batch=3, length=11, d=16, vocab=53, with_bias=False):
  rng = np.random.default_rng(seed)
  h = rng.normal(size=(batch, length, d)).astype(np.float32)
  kernel = (rng.normal(size=(vocab, d)) / np.sqrt(d)).astype(np.float32)
  bias = rng.normal(size=(vocab,)).astype(np.float32) if with_bias else None
  targets = rng.integers(0, vocab, size=(batch, length)).astype(np.int32)
  weights = (rng.random((batch, length)) > 0.25).astype(np.float32)
  return h, kernel, bias, targets, weights


@pytest.mark.parametrize('with_bias', [False, True])
@pytest.mark.parametrize('chunk_size', [4, 16, 64])
def test_fused_matches_numpy_and_plain_path(with_bias, chunk_size):
  h, kernel, bias, targets, weights = problem(with_bias=with_bias)
  expected = numpy_sums(h, kernel, bias, targets, weights, 0.1)
  fused = fused_cross_entropy_sums(h, kernel, bias, targets, weights, 0.1, chunk_size)
  logits = jnp.einsum('btd,vd->btv', h, kernel) + (0 if bias is None else bias)
  plain = cross_entropy_sums(logits, targets, weights, 0.1)
  for got in (fused, plain):
    np.testing.assert_allclose([float(x) for x in got], expected, rtol=1e-5)


@pytest.mark.parametrize('with_bias', [False, True])
@pytest.mark.parametrize('eps', [0.0, 0.1])
def test_fused_gradients_equal_autodiff_of_plain_path(with_bias, eps):
  h, kernel, bias, targets, weights = problem(seed=1, with_bias=with_bias)
  bias = jnp.zeros(kernel.shape[0]) if bias is None and with_bias else bias

  def plain(h, kernel, bias):
    logits = jnp.einsum('btd,vd->btv', h, kernel) + (0 if bias is None else bias)
    return cross_entropy_sums(logits, targets, weights, eps)[0] * 0.37

  def fused(h, kernel, bias):
    return fused_cross_entropy_sums(h, kernel, bias, targets, weights, eps, 8)[0] * 0.37

  argnums = (0, 1, 2) if with_bias else (0, 1)
  want = jax.grad(plain, argnums)(h, kernel, bias)
  got = jax.grad(fused, argnums)(h, kernel, bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_fused_metrics_carry_no_gradient_and_jit():
  h, kernel, _, targets, weights = problem(seed=2)

  def nll(h):
    return fused_cross_entropy_sums(h, kernel, None, targets, weights, 0.1, 8)[1]

  np.testing.assert_array_equal(jax.jit(jax.grad(nll))(h), np.zeros_like(h))


def test_fused_bfloat16_features_close_to_float32():
  h, kernel, _, targets, weights = problem(seed=3, d=32)
  f32 = fused_cross_entropy_sums(h, kernel, None, targets, weights, 0.1, 16)[0]
  bf16 = fused_cross_entropy_sums(
    jnp.asarray(h, jnp.bfloat16), kernel, None, targets, weights, 0.1, 16
  )[0]
  np.testing.assert_allclose(float(bf16), float(f32), rtol=2e-2)


def test_fused_bfloat16_matmuls_match_plain_path_on_rounded_operands():
  """matmul_dtype=bfloat16: the loss is the float32 loss of bfloat16-rounded features and kernel;
  the gradients are within bfloat16 rounding of the float32 ones."""
  h, kernel, _, targets, weights = problem(seed=4, d=32)
  rounded = [jnp.asarray(a, jnp.bfloat16).astype(jnp.float32) for a in (h, kernel)]
  want = numpy_sums(*rounded[:1], rounded[1], None, targets, weights, 0.1)
  got = fused_cross_entropy_sums(h, kernel, None, targets, weights, 0.1, 16, jnp.bfloat16)
  np.testing.assert_allclose([float(x) for x in got], want, rtol=1e-5)

  def loss(h, kernel, matmul_dtype):
    return fused_cross_entropy_sums(h, kernel, None, targets, weights, 0.1, 16, matmul_dtype)[0]

  grads = jax.grad(loss, (0, 1))(h, kernel, jnp.bfloat16)
  for g, w in zip(grads, jax.grad(loss, (0, 1))(h, kernel, None)):
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(g, w, rtol=0, atol=2e-2 * np.abs(w).max())


def numpy_rdrop_sums(h_pairs, kernel, bias, targets, weights, eps, alpha):
  """R-Drop from its definition (Liang et al. 2021), float64: per token the paper's
  CE(p1) + CE(p2) + alpha/2 (KL(p1||p2) + KL(p2||p1)), halved; NLL and correct: pass means."""
  passes = [numpy_sums(h_pairs[..., i, :], kernel, bias, targets, weights, eps) for i in (0, 1)]
  logits = np.asarray(h_pairs, np.float64) @ np.asarray(kernel, np.float64).T
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  p, q = np.exp(logp[..., 0, :]), np.exp(logp[..., 1, :])
  kl_pq = (p * (logp[..., 0, :] - logp[..., 1, :])).sum(-1)
  kl_qp = (q * (logp[..., 1, :] - logp[..., 0, :])).sum(-1)
  paper = passes[0][0] + passes[1][0] + alpha / 2 * ((kl_pq + kl_qp) * weights).sum()
  return (paper / 2, (passes[0][1] + passes[1][1]) / 2, (passes[0][2] + passes[1][2]) / 2)


def rdrop_problem(seed, with_bias=False):
  h, kernel, bias, targets, weights = problem(seed=seed, with_bias=with_bias)
  rng = np.random.default_rng(seed + 100)  # the second pass: the first one perturbed
  h_pairs = np.stack([h, h + 0.5 * rng.normal(size=h.shape).astype(np.float32)], axis=-2)
  return h_pairs, kernel, bias, targets, weights


@pytest.mark.parametrize('with_bias', [False, True])
@pytest.mark.parametrize('chunk_size', [4, 7, 64])
def test_rdrop_fused_and_plain_paths_match_numpy_definition(with_bias, chunk_size):
  h_pairs, kernel, bias, targets, weights = rdrop_problem(5, with_bias)
  expected = numpy_rdrop_sums(h_pairs, kernel, bias, targets, weights, 0.1, 5.0)
  fused = fused_cross_entropy_sums(
    h_pairs, kernel, bias, targets, weights, 0.1, chunk_size, rdrop_alpha=5.0
  )
  logits = jnp.einsum('btpd,vd->btpv', h_pairs, kernel) + (0 if bias is None else bias)
  plain = rdrop_cross_entropy_sums(logits, targets, weights, 0.1, 5.0)
  for got in (fused, plain):
    np.testing.assert_allclose([float(x) for x in got], expected, rtol=1e-5)
  # the KL term is what alpha adds: it is positive for two different passes
  assert expected[0] > numpy_rdrop_sums(h_pairs, kernel, bias, targets, weights, 0.1, 0.0)[0]


def test_rdrop_of_two_identical_passes_is_the_plain_loss():
  h, kernel, _, targets, weights = problem(seed=6)
  h_pairs = np.stack([h, h], axis=-2)
  want = fused_cross_entropy_sums(h, kernel, None, targets, weights, 0.1, 8)
  got = fused_cross_entropy_sums(h_pairs, kernel, None, targets, weights, 0.1, 8, rdrop_alpha=3.0)
  np.testing.assert_allclose([float(x) for x in got], [float(x) for x in want], rtol=1e-6)


@pytest.mark.parametrize('with_bias', [False, True])
def test_rdrop_fused_gradients_equal_autodiff_of_plain_path(with_bias):
  h_pairs, kernel, bias, targets, weights = rdrop_problem(7, with_bias)

  def plain(h, kernel, bias):
    logits = jnp.einsum('btpd,vd->btpv', h, kernel) + (0 if bias is None else bias)
    return rdrop_cross_entropy_sums(logits, targets, weights, 0.1, 5.0)[0] * 0.37

  def fused(h, kernel, bias):
    return (
      fused_cross_entropy_sums(h, kernel, bias, targets, weights, 0.1, 8, rdrop_alpha=5.0)[0] * 0.37
    )

  argnums = (0, 1, 2) if with_bias else (0, 1)
  want = jax.grad(plain, argnums)(h_pairs, kernel, bias)
  got = jax.grad(fused, argnums)(h_pairs, kernel, bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
