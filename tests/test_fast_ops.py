"""The speed techniques of model/fast_ops.py against their plain formulas: NumPy, finite
differences, and the `*_reference` functions beside them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model import decoding, fast_ops, transformer
from model.transformer import EncoderDecoder

from helpers import tiny_model_config


def _bf16_rounded(x):
  return np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32), np.float64)


def numpy_masked_softmax(scores, mask):
  s = np.where(mask, scores, -np.inf)
  top = np.max(np.where(mask, scores, -1e300), axis=-1, keepdims=True)
  e = np.where(mask, np.exp(s - top), 0.0)
  total = e.sum(-1, keepdims=True)
  return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


def test_masked_softmax_gradient_equals_finite_differences():
  """The custom VJP (dw -> w * (dw - sum(dw * w))) against central differences in float64,
  with a partly masked row and a fully masked one (whose gradient is zero)."""
  rng = np.random.default_rng(3)
  scores = rng.normal(size=(3, 5))
  mask = np.array([[True] * 5, [True, False, True, False, True], [False] * 5])
  cotangent = rng.normal(size=(3, 5))
  weights, vjp = jax.vjp(
    lambda s: fast_ops.masked_softmax(s, jnp.asarray(mask)), jnp.asarray(scores, jnp.float32)
  )
  np.testing.assert_allclose(weights, numpy_masked_softmax(scores, mask), atol=1e-6)
  (grad,) = vjp(jnp.asarray(cotangent, jnp.float32))
  numeric = np.zeros_like(scores)
  step = 1e-6
  for i in np.ndindex(scores.shape):
    up, down = scores.copy(), scores.copy()
    up[i] += step
    down[i] -= step
    numeric[i] = np.sum(
      cotangent * (numpy_masked_softmax(up, mask) - numpy_masked_softmax(down, mask))
    ) / (2 * step)
  np.testing.assert_allclose(grad, numeric, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(grad)[2], 0.0)


@pytest.mark.parametrize('rate', [0.1, 0.3, 0.5])
def test_dropout_mask_keep_rate_and_independence(rate):
  """The hash-based mask behaves like i.i.d. Bernoulli(1 - rate) draws."""
  shape = (64, 32, 128)
  n = np.prod(shape)
  keep = np.asarray(fast_ops.dropout_keep_mask(jax.random.key(1), rate, shape)).reshape(-1)
  p = 1 - rate
  sigma = np.sqrt(p * (1 - p) / n)
  assert abs(keep.mean() - p) < 5 * sigma
  # neighbours along the last axis, across rows, and across the batch are independent
  for lag in (1, 128, 32 * 128):
    both = (keep[:-lag] & keep[lag:]).mean()
    assert abs(both - p * p) < 5 * np.sqrt(p * p * (1 - p * p) / (n - lag)), lag
  # another key gives an independent mask; the same key the same mask
  other = np.asarray(fast_ops.dropout_keep_mask(jax.random.key(2), rate, shape)).reshape(-1)
  assert abs((keep & other).mean() - p * p) < 5 * np.sqrt(p * p * (1 - p * p) / n)
  again = np.asarray(fast_ops.dropout_keep_mask(jax.random.key(1), rate, shape)).reshape(-1)
  np.testing.assert_array_equal(keep, again)


def test_dropout_mask_keep_rate_for_folded_keys():
  """Keys that differ only by fold_in (one per layer and step) give uncorrelated masks."""
  key = jax.random.key(0)
  masks = np.stack(
    [
      np.asarray(fast_ops.dropout_keep_mask(jax.random.fold_in(key, i), 0.5, (4096,)))
      for i in range(16)
    ]
  ).astype(np.float64)
  corr = np.corrcoef(masks)
  off_diagonal = corr[~np.eye(16, dtype=bool)]
  assert np.abs(off_diagonal).max() < 5 / np.sqrt(4096)


@pytest.mark.parametrize(
  'spec,x_shape,w_shape',
  [
    ('btd,dinh->btinh', (2, 5, 8), (8, 3, 2, 4)),
    ('btnh,nhd->btd', (2, 5, 2, 4), (2, 4, 8)),
    ('...i,io->...o', (3, 5, 8), (8, 6)),
  ],
)
def test_mixed_precision_matmul_is_the_float64_product_of_bfloat16_rounded_operands(
  spec, x_shape, w_shape
):
  rng = np.random.default_rng(0)
  x = rng.normal(size=x_shape).astype(np.float32)
  w = rng.normal(size=w_shape).astype(np.float32)
  g = rng.normal(size=np.einsum(spec, x, w).shape).astype(np.float32)
  out, vjp = jax.vjp(lambda x, w: fast_ops.matmul(spec, x, w, jnp.bfloat16), x, w)
  dx, dw = vjp(jnp.asarray(g))
  xr, wr, gr = _bf16_rounded(x), _bf16_rounded(w), _bf16_rounded(g)
  # forward: bfloat16 operands, float32 sums; backward: the incoming gradient is rounded too
  inputs, output = spec.replace('...', 'bt').split('->')  # NumPy: name the leading axes
  x_spec, w_spec = inputs.split(',')
  np.testing.assert_allclose(
    out, np.einsum(f'{x_spec},{w_spec}->{output}', xr, wr), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
    dx, np.einsum(f'{output},{w_spec}->{x_spec}', gr, wr), rtol=1e-5, atol=1e-5
  )
  np.testing.assert_allclose(
    dw, np.einsum(f'{x_spec},{output}->{w_spec}', xr, gr), rtol=1e-5, atol=1e-5
  )
  assert out.dtype == dx.dtype == dw.dtype == jnp.float32
  # and it differs from the float32 product (else the test would not tell the paths apart)
  assert not np.allclose(out, np.einsum(spec, x, w), rtol=1e-5, atol=1e-5)


def test_matmul_in_the_operands_dtype_is_plain_einsum_and_bad_specs_raise():
  x, w = jnp.ones((2, 3)), jnp.ones((3, 4))
  np.testing.assert_array_equal(fast_ops.matmul('ij,jk->ik', x, w, jnp.float32), x @ w)
  with pytest.raises(ValueError, match='not a plain contraction'):
    fast_ops.matmul('ij,jk->i', x, w, jnp.bfloat16)


def test_layer_norm_equals_numpy_and_its_gradients_equal_autodiff():
  """transformer.LayerNorm: values against NumPy in float64 and against nnx.LayerNorm; the
  hand-written backward pass against autodiff of the plain formula."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 4, 16)) * 2.0 + 0.5
  scale, bias = 1.0 + 0.3 * rng.normal(size=16), 0.2 * rng.normal(size=16)
  norm = transformer.LayerNorm(16, epsilon=1e-6, rngs=nnx.Rngs(0))
  norm.scale[...] = jnp.asarray(scale, jnp.float32)
  norm.bias[...] = jnp.asarray(bias, jnp.float32)
  x32 = jnp.asarray(x, jnp.float32)
  ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6) * scale + bias
  np.testing.assert_allclose(norm(x32), ref, atol=2e-5)
  flax_norm = nnx.LayerNorm(16, epsilon=1e-6, rngs=nnx.Rngs(0))
  flax_norm.scale[...], flax_norm.bias[...] = norm.scale[...], norm.bias[...]
  np.testing.assert_allclose(norm(x32), flax_norm(x32), atol=2e-5)
  ours_rngs, flax_rngs = nnx.Rngs(7), nnx.Rngs(7)  # draws the keys nnx.LayerNorm draws
  transformer.LayerNorm(16, rngs=ours_rngs), nnx.LayerNorm(16, rngs=flax_rngs)
  np.testing.assert_array_equal(
    jax.random.key_data(ours_rngs.params()), jax.random.key_data(flax_rngs.params())
  )

  def plain(x, scale, bias):
    centred = x - jnp.mean(x, -1, keepdims=True)
    return centred / jnp.sqrt(jnp.mean(centred**2, -1, keepdims=True) + 1e-6) * scale + bias

  cotangent = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  args = (x32, jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32))
  ours = jax.grad(lambda *a: jnp.sum(fast_ops.layer_norm(*a, 1e-6) * cotangent), argnums=(0, 1, 2))(
    *args
  )
  want = jax.grad(lambda *a: jnp.sum(plain(*a) * cotangent), argnums=(0, 1, 2))(*args)
  for a, b in zip(ours, want):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)


def test_auto_matmul_dtype_is_bfloat16_only_where_it_is_native(tmp_path):
  cpuinfo = tmp_path / 'cpuinfo'
  cpuinfo.write_text(
    'processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n'
    'processor\t: 1\nflags\t\t: fpu avx2 avx512f avx512_bf16\n'
  )
  assert fast_ops.cpu_flags(str(cpuinfo)) == {'fpu', 'avx2', 'avx512f', 'avx512_bf16'}
  assert fast_ops.cpu_flags(str(tmp_path / 'missing')) == set()
  auto = fast_ops.resolve_matmul_dtype
  assert auto('auto', 'cpu', {'avx512f', 'avx512_bf16'}) == jnp.bfloat16
  assert auto('auto', 'cpu', {'amx_bf16'}) == jnp.bfloat16
  assert auto('auto', 'cpu', {'avx2', 'avx512f', 'avx512_vnni'}) == jnp.float32  # emulated
  assert auto('auto', 'gpu', set()) == auto('auto', 'tpu', set()) == jnp.bfloat16
  assert auto('float32', 'gpu') == jnp.float32 and auto('bfloat16', 'cpu', set()) == jnp.bfloat16
  # The model takes 'auto' and resolves it for the machine it runs on.
  model = EncoderDecoder(tiny_model_config(matmul_dtype='auto'), rngs=nnx.Rngs(0))
  assert model.matmul_dtype == auto('auto')


@pytest.mark.parametrize('vocab,k', [(1000, 8), (1037, 8), (997, 3), (300, 8), (40, 8)])
def test_two_stage_top_k_equals_numpy_stable_sort(vocab, k):
  # Entries drawn from few values, so ties are everywhere (including between blocks); the
  # reference orders by value, then by lower index, as lax.top_k does.
  rng = np.random.default_rng(vocab)
  x = rng.integers(-5, 5, (3, 4, vocab)).astype(np.float32)
  x[0, 0, :] = 1.0  # one row all tied
  x[1, 1, ::7] = decoding.NEG_INF  # restricted entries
  x[2, 3, -1] = 9.0  # the maximum in the (possibly padded) last block
  values, indices = fast_ops.top_k(jnp.asarray(x), k, block=16)
  order = np.argsort(-x, axis=-1, kind='stable')[..., :k]
  np.testing.assert_array_equal(np.asarray(indices), order)
  np.testing.assert_array_equal(np.asarray(values), np.take_along_axis(x, order, axis=-1))


# ------------------------------------------------------------------------ against the references


def test_masked_softmax_values_and_gradients_equal_the_reference():
  rng = np.random.default_rng(4)
  scores = jnp.asarray(rng.normal(size=(2, 3, 4, 6)), jnp.float32)
  mask = jnp.asarray(rng.random((2, 1, 4, 6)) < 0.7).at[0, 0, 1].set(False)  # a masked row
  cotangent = jnp.asarray(rng.normal(size=scores.shape), jnp.float32)
  for m in (mask, None):
    values = [f(scores, m) for f in (fast_ops.masked_softmax, fast_ops.masked_softmax_reference)]
    np.testing.assert_allclose(values[0], values[1], atol=1e-7)
    grads = [
      jax.grad(lambda s, f=f: jnp.sum(f(s, m) * cotangent))(scores)
      for f in (fast_ops.masked_softmax, fast_ops.masked_softmax_reference)
    ]
    np.testing.assert_allclose(grads[0], grads[1], atol=1e-6)


def test_layer_norm_values_and_gradients_equal_the_reference():
  rng = np.random.default_rng(5)
  args = [
    jnp.asarray(rng.normal(size=shape) + 0.5, jnp.float32) for shape in ((3, 5, 8), (8,), (8,))
  ]
  cotangent = jnp.asarray(rng.normal(size=(3, 5, 8)), jnp.float32)
  values = [f(*args, 1e-6) for f in (fast_ops.layer_norm, fast_ops.layer_norm_reference)]
  np.testing.assert_allclose(values[0], values[1], atol=1e-5)
  grads = [
    jax.grad(lambda *a, f=f: jnp.sum(f(*a, 1e-6) * cotangent), argnums=(0, 1, 2))(*args)
    for f in (fast_ops.layer_norm, fast_ops.layer_norm_reference)
  ]
  for ours, reference in zip(*grads):
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_top_k_equals_the_reference_ties_included():
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.integers(-3, 3, (4, 2, 1000)), jnp.float32)  # many ties
  for k in (1, 4, 8):
    for ours, reference in zip(fast_ops.top_k(x, k), fast_ops.top_k_reference(x, k)):
      np.testing.assert_array_equal(ours, reference)


@pytest.mark.parametrize('rate', [0.1, 0.5])
def test_hashed_dropout_keeps_as_often_as_the_reference(rate):
  shape = (64, 1024)
  ours = np.mean(np.asarray(fast_ops.dropout_keep_mask(jax.random.key(0), rate, shape)))
  reference = np.mean(
    np.asarray(fast_ops.dropout_keep_mask_reference(jax.random.key(0), rate, shape))
  )
  sigma = np.sqrt(rate * (1 - rate) / np.prod(shape))
  assert abs(ours - (1 - rate)) < 5 * sigma and abs(reference - (1 - rate)) < 5 * sigma
