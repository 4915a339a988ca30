"""Scaled dot-product and multi-head attention against a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model import attention as attn


def numpy_attention(q, k, v, mask):
  """softmax(Q Kᵀ / sqrt(d)) V per head, straight from the definition; masked keys excluded."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  b, lq, h, d = q.shape
  out = np.zeros((b, lq, h, v.shape[-1]))
  weights = np.zeros((b, h, lq, k.shape[1]))
  mask = np.broadcast_to(np.asarray(mask), (b, h, lq, k.shape[1]))
  for bi in range(b):
    for hi in range(h):
      scores = q[bi, :, hi] @ k[bi, :, hi].T / np.sqrt(d)
      for qi in range(lq):
        allowed = mask[bi, hi, qi]
        if not allowed.any():
          continue
        s = np.where(allowed, scores[qi], -np.inf)
        w = np.exp(s - s[allowed].max())
        w /= w.sum()
        weights[bi, hi, qi] = w
        out[bi, qi, hi] = w @ v[bi, :, hi]
  return out, weights


def random_qkv(seed=0, b=2, lq=5, lk=7, h=3, d=4):
  rng = np.random.default_rng(seed)
  return (
    rng.normal(size=(b, lq, h, d)).astype(np.float32),
    rng.normal(size=(b, lk, h, d)).astype(np.float32),
    rng.normal(size=(b, lk, h, d)).astype(np.float32),
  )


def padded_causal_mask():
  tokens = jnp.array([[4, 5, 6, 7, 8, 0, 0], [4, 5, 6, 0, 0, 0, 0]])
  return attn.combine_masks(attn.make_padding_mask(tokens, tokens), attn.make_causal_mask(7))


def test_masks_match_hand_computed_values():
  tokens = jnp.array([[3, 4, 0]])
  np.testing.assert_array_equal(
    attn.make_padding_mask(tokens, tokens)[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]]
  )
  np.testing.assert_array_equal(attn.make_causal_mask(3)[0, 0], [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
  segments = jnp.array([[1, 1, 2, 0]])
  np.testing.assert_array_equal(
    attn.make_segment_mask(segments, segments)[0, 0],
    [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]],
  )
  assert attn.combine_masks(None, None) is None


@pytest.mark.parametrize('mask_kind', ['none', 'padding', 'padding+causal'])
def test_attention_equals_numpy_definition(mask_kind):
  q, k, v = random_qkv(lq=7, lk=7)
  tokens = jnp.array([[4, 5, 6, 7, 8, 0, 0], [4, 5, 6, 0, 0, 0, 0]])
  mask = {
    'none': jnp.ones((1, 1, 7, 7), bool),
    'padding': attn.make_padding_mask(tokens, tokens),
    'padding+causal': padded_causal_mask(),
  }[mask_kind]
  out, weights = attn.dot_product_attention(q, k, v, mask, return_weights=True)
  ref_out, ref_weights = numpy_attention(q, k, v, mask)
  np.testing.assert_allclose(out, ref_out, atol=1e-5)
  np.testing.assert_allclose(weights, ref_weights, atol=1e-6)


def test_weights_are_a_distribution_with_exact_zeros_on_masked_keys():
  q, k, v = random_qkv(lq=7, lk=7)
  mask = padded_causal_mask()
  _, weights = attn.dot_product_attention(q, k, v, mask, return_weights=True)
  full = np.broadcast_to(np.asarray(mask), weights.shape)
  assert (np.asarray(weights) >= 0).all()
  assert (np.asarray(weights)[~full] == 0.0).all()  # exactly zero, not merely small
  row_sums = np.asarray(weights).sum(-1)
  has_key = full.any(-1)
  np.testing.assert_allclose(row_sums[has_key], 1.0, atol=1e-6)


def test_fully_masked_query_gives_zeros_not_nan():
  q, k, v = random_qkv(lq=3, lk=4)
  mask = jnp.array([[True, True, False, False], [False] * 4, [True] * 4])[None, None]
  for kernel in attn.KERNELS:
    out = attn.dot_product_attention(q, k, v, mask, kernel=kernel)
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_array_equal(np.asarray(out)[:, 1], 0.0)


def test_attention_gradients_equal_autodiff_of_plain_softmax():
  """Gradients through dot_product_attention (custom softmax VJP) against autodiff of the
  same attention written with jax.nn.softmax."""
  q, k, v = random_qkv(lq=7, lk=7)
  mask = padded_causal_mask()

  def plain(q, k, v):
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
    weights = jax.nn.softmax(jnp.where(mask, scores, -1e30), axis=-1)
    weights = jnp.where(mask, weights, 0.0)
    return jnp.einsum('bhqk,bkhd->bqhd', weights, v)

  cotangent = jnp.asarray(np.random.default_rng(4).normal(size=q.shape), jnp.float32)
  ours = jax.grad(
    lambda *a: jnp.sum(attn.dot_product_attention(*a, mask) * cotangent), argnums=(0, 1, 2)
  )(q, k, v)
  ref = jax.grad(lambda *a: jnp.sum(plain(*a) * cotangent), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_softmax_is_float32_for_bfloat16_inputs():
  q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in random_qkv())
  out, weights = attn.dot_product_attention(q, k, v, return_weights=True)
  assert weights.dtype == jnp.float32 and out.dtype == jnp.bfloat16
  ref_out, _ = numpy_attention(
    q.astype(jnp.float32),
    k.astype(jnp.float32),
    v.astype(jnp.float32),
    jnp.ones((1, 1, 5, 7), bool),
  )
  np.testing.assert_allclose(np.asarray(out, np.float32), ref_out, atol=5e-2)


def test_einsum_and_jax_kernels_agree_and_the_jax_kernel_says_which_it_runs(capfd):
  q, k, v = random_qkv(lq=7, lk=7, h=2, d=8)
  mask = padded_causal_mask()
  attn._notice.cache_clear()  # pylint: disable=protected-access
  a = attn.dot_product_attention(q, k, v, mask, kernel='einsum')
  b = attn.dot_product_attention(q, k, v, mask, kernel='jax')
  np.testing.assert_allclose(a, b, atol=1e-5)
  attn.dot_product_attention(q, k, v, mask, kernel='jax')
  notices = capfd.readouterr().err.splitlines()
  if jax.default_backend() != 'gpu':  # once per process, whatever the number of calls
    assert (
      notices.count(
        f'attention_kernel=jax: XLA attention, not cuDNN (the program is for '
        f'{jax.default_backend()}, not CUDA GPUs).'
      )
      <= 1
    )


def test_attention_mask_structure_gives_the_masks_it_names():
  valid = jnp.array([[True, True, False]])
  np.testing.assert_array_equal(
    attn.AttentionMask.padding(valid, valid, causal=True).dense()[0, 0],
    [[1, 0, 0], [1, 1, 0], [0, 0, 0]],
  )
  segments = jnp.array([[1, 1, 2, 0]])
  np.testing.assert_array_equal(
    attn.AttentionMask.segments(segments, segments, causal=True).dense()[0, 0],
    [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]],
  )
  decoding = attn.AttentionMask.padding(None, jnp.array([[True, True, False]])).dense()
  assert decoding.shape == (1, 1, 1, 3)
  np.testing.assert_array_equal(decoding[0, 0, 0], [1, 1, 0])
  with pytest.raises(ValueError, match='causal AttentionMask needs query and key segments'):
    attn.AttentionMask.padding(valid, jnp.ones((1, 4), bool), causal=True).dense()


def structured_masks():
  """Masks as the model builds them: [q_len, kv_len] and the AttentionMask."""
  real = jnp.array([[1] * 7, [1] * 4 + [0] * 3], bool)
  source = jnp.array([[1] * 5 + [0] * 4, [1] * 9], bool)
  packed = jnp.array([[1, 1, 1, 2, 2, 2, 2], [1, 1, 2, 2, 2, 3, 0]])
  packed_source = jnp.array([[1, 1, 2, 2, 2, 2, 0, 0, 0], [1, 2, 2, 2, 3, 3, 3, 3, 0]])
  return {
    'encoder': (7, 7, attn.AttentionMask.padding(real, real)),
    'decoder': (7, 7, attn.AttentionMask.padding(real, real, causal=True)),
    'cross': (7, 9, attn.AttentionMask.padding(real, source)),
    'decoding step': (1, 9, attn.AttentionMask.padding(None, jnp.arange(9)[None, :] <= 4)),
    'packed decoder': (7, 7, attn.AttentionMask.segments(packed, packed, causal=True)),
    'packed cross': (7, 9, attn.AttentionMask.segments(packed, packed_source)),
  }


@pytest.mark.parametrize('name', list(structured_masks()))
def test_jax_kernel_given_the_masks_structure_equals_the_definition(name):
  """The jax kernel passes is_causal and sequence lengths (or, packed, is_causal and the segment
  mask) to jax.nn.dot_product_attention: outputs and gradients equal the einsum kernel's on the
  dense mask, and the NumPy definition."""
  lq, lk, mask = structured_masks()[name]
  arguments = attn._mask_arguments(mask, 2)  # pylint: disable=protected-access
  assert arguments['is_causal'] == mask.causal
  assert ('mask' in arguments) == mask.packed  # rows of one example: lengths, not an array
  q, k, v = random_qkv(lq=lq, lk=lk, h=2, d=8)
  ref_out, _ = numpy_attention(q, k, v, mask.dense())
  cotangent = jnp.asarray(np.random.default_rng(5).normal(size=q.shape), jnp.float32)
  results = {}
  for kernel in attn.KERNELS:
    f = lambda *a, kernel=kernel: attn.dot_product_attention(*a, mask, kernel=kernel)
    out, vjp = jax.vjp(f, q, k, v)
    np.testing.assert_allclose(out, ref_out, atol=1e-5)
    results[kernel] = vjp(cotangent)
  for a, b in zip(results['einsum'], results['jax']):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize(
  'backend,dtype,head_dim,why',
  [
    ('gpu', jnp.bfloat16, 64, ''),
    ('gpu', jnp.float16, 128, ''),
    ('cpu', jnp.bfloat16, 64, 'the program is for cpu, not CUDA GPUs'),
    ('gpu', jnp.float32, 64, 'float32 inputs; cuDNN takes bfloat16 or float16 (config.dtype)'),
    ('gpu', jnp.bfloat16, 12, 'head size 12; cuDNN takes multiples of 8 up to 256'),
    ('gpu', jnp.bfloat16, 512, 'head size 512; cuDNN takes multiples of 8 up to 256'),
  ],
)
def test_fused_attention_is_asked_for_only_where_cudnn_takes_the_inputs(
  backend, dtype, head_dim, why
):
  query = jax.ShapeDtypeStruct((2, 16, 4, head_dim), dtype)
  assert attn.fused_attention_unsupported(query, backend) == why


def test_attention_dropout_zeroes_weights_and_rescales():
  q, k, v = random_qkv()
  _, w = attn.dot_product_attention(q, k, v, return_weights=True)
  _, wd = attn.dot_product_attention(
    q, k, v, dropout_rate=0.5, dropout_rng=jax.random.key(0), return_weights=True
  )
  kept = np.asarray(wd) != 0
  assert 0.3 < kept.mean() < 0.7
  np.testing.assert_allclose(np.asarray(wd)[kept], 2 * np.asarray(w)[kept], rtol=1e-6)


def mha_numpy(module, x_q, x_kv, mask):
  """Multi-head attention from the definition: per-head projections, attention, concat, W_O."""
  p = lambda v: np.asarray(v[...], np.float64)
  heads = []
  for h in range(module.num_heads):
    if module.self_attention:
      wq, wk, wv = (p(module.qkv_kernel)[:, i, h] for i in range(3))
      bq, bk, bv = (p(module.qkv_bias)[i, h] for i in range(3))
    else:
      wq, bq = p(module.q_kernel)[:, h], p(module.q_bias)[h]
      wk, wv = p(module.kv_kernel)[:, 0, h], p(module.kv_kernel)[:, 1, h]
      bk, bv = p(module.kv_bias)[0, h], p(module.kv_bias)[1, h]
    q, k, v = x_q @ wq + bq, x_kv @ wk + bk, x_kv @ wv + bv
    if module.qk_scale is not None:  # QKNorm: scores g cos(q, k); numpy_attention divides by
      unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # sqrt(d), so undo it
      q, k = p(module.qk_scale) * np.sqrt(q.shape[-1]) * unit(q), unit(k)
    out, _ = numpy_attention(q[:, :, None], k[:, :, None], v[:, :, None], mask)
    heads.append(out[:, :, 0])
  concat = np.concatenate(heads, axis=-1)  # [b, q, heads * head_dim]
  w_o = p(module.out_kernel).reshape(-1, module.d_model)
  return concat @ w_o + p(module.out_bias)


@pytest.mark.parametrize('qk_norm', [0.0, 7.0])
def test_multi_head_self_attention_equals_per_head_definition(qk_norm):
  mha = attn.MultiHeadAttention(12, 3, rngs=nnx.Rngs(0), qk_norm=qk_norm)
  x = np.random.default_rng(1).normal(size=(2, 7, 12)).astype(np.float32)
  mask = padded_causal_mask()
  np.testing.assert_allclose(mha(x, mask=mask), mha_numpy(mha, x, x, mask), atol=1e-4)


@pytest.mark.parametrize('qk_norm', [0.0, 7.0])
def test_multi_head_cross_attention_equals_per_head_definition(qk_norm):
  mha = attn.MultiHeadAttention(12, 4, rngs=nnx.Rngs(0), self_attention=False, qk_norm=qk_norm)
  rng = np.random.default_rng(2)
  x_q = rng.normal(size=(2, 3, 12)).astype(np.float32)
  x_kv = rng.normal(size=(2, 7, 12)).astype(np.float32)
  kv_tokens = jnp.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 0]])
  mask = attn.make_padding_mask(jnp.ones((2, 3), int), kv_tokens)
  np.testing.assert_allclose(mha(x_q, x_kv, mask=mask), mha_numpy(mha, x_q, x_kv, mask), atol=1e-4)


@pytest.mark.parametrize('rotary,qk_norm', [(False, 0.0), (True, 0.0), (True, 7.0)])
def test_cached_self_attention_steps_equal_full_causal_attention(rotary, qk_norm):
  """With rotary, the step rotates by the cache index what the full pass rotates by 0..5; with
  qk_norm, the cache holds the normalised keys."""
  mha = attn.MultiHeadAttention(16, 4, rngs=nnx.Rngs(0), rotary=rotary, qk_norm=qk_norm)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 6, 16)), jnp.float32)
  full = mha(x, mask=attn.make_causal_mask(6))
  cache = mha.init_cache(2, 8)
  steps = []
  for t in range(6):
    out, cache = mha.decode_step(x[:, t : t + 1], cache)
    steps.append(out)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)
  assert int(cache['index']) == 6


def test_rotary_embedding_equals_complex_rotation_and_keeps_relative_offsets():
  """RoPE against NumPy: feature pair (i, i + d/2) as the complex number x_i + i x_{i+d/2},
  multiplied by exp(i p theta_i), theta_i = 10000^(-2i/d). Rotated scores q_m . k_n depend on
  n - m only: self-attention with all positions shifted by 5 gives the same output (cached
  decoding: test_cached_self_attention_steps_equal_full_causal_attention)."""
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 5, 3, 8)).astype(np.float32)
  positions = np.array([[0, 1, 2, 3, 4], [7, 0, 1, 2, 40]])
  theta = 10000.0 ** (-2 * np.arange(4) / 8)
  z = (x[..., :4] + 1j * x[..., 4:]) * np.exp(1j * positions[:, :, None, None] * theta)
  np.testing.assert_allclose(
    attn.rotary_embedding(jnp.asarray(x), jnp.asarray(positions)),
    np.concatenate([z.real, z.imag], -1),
    atol=2e-5,
  )

  mha = attn.MultiHeadAttention(16, 2, rngs=nnx.Rngs(0), rotary=True)
  h = jnp.asarray(rng.normal(size=(2, 6, 16)), jnp.float32)
  mask = attn.make_causal_mask(6)
  at0 = mha(h, mask=mask)
  np.testing.assert_allclose(mha(h, mask=mask, positions=jnp.arange(6)[None] + 5), at0, atol=2e-5)
  assert not np.allclose(mha(h, mask=mask, positions=2 * jnp.arange(6)[None]), at0, atol=1e-3)
  plain = attn.MultiHeadAttention(16, 2, rngs=nnx.Rngs(0))  # the same weights, no rotation
  assert not np.allclose(plain(h, mask=mask), at0, atol=1e-3)
  with pytest.raises(ValueError, match='rotary'):
    attn.MultiHeadAttention(16, 2, rngs=nnx.Rngs(0), rotary=True, self_attention=False)


def test_qk_norm_scores_are_the_learned_scale_times_cosine_whatever_the_input_scale():
  """QKNorm (Henry et al. 2020): scaling the inputs of the Q and K projections (no biases here
  at init) leaves the output unchanged; the scale g gets a gradient, and AdamW leaves it alone."""
  from training.optimizer import decays_weight

  mha = attn.MultiHeadAttention(16, 2, rngs=nnx.Rngs(0), self_attention=False, qk_norm=5.0)
  rng = np.random.default_rng(5)
  x_q, x_kv = (jnp.asarray(rng.normal(size=(2, n, 16)), jnp.float32) for n in (3, 4))
  assert np.asarray(mha.qk_scale[...]) == 5.0
  q_only = mha(3.0 * x_q, x_kv) - mha.out_bias[...]
  np.testing.assert_allclose(q_only, mha(x_q, x_kv) - mha.out_bias[...], atol=1e-5)
  scaled_kv = mha(x_q, 3.0 * x_kv) - mha.out_bias[...]  # K normalised, V scaled
  np.testing.assert_allclose(scaled_kv, 3.0 * (mha(x_q, x_kv) - mha.out_bias[...]), atol=1e-4)

  graphdef, params = nnx.split(mha, nnx.Param)
  loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(x_q, x_kv) ** 2)
  grads = nnx.to_pure_dict(jax.grad(loss)(params))
  assert abs(float(grads['qk_scale'])) > 0
  mask = decays_weight(nnx.to_pure_dict(params))
  assert not mask['qk_scale'] and mask['kv_kernel']
  with pytest.raises(ValueError, match='qk_norm'):
    attn.MultiHeadAttention(16, 2, rngs=nnx.Rngs(0), qk_norm=-1.0)


def test_malformed_inputs_raise_clear_errors():
  q, k, v = random_qkv()
  with pytest.raises(ValueError, match='rank 4'):
    attn.dot_product_attention(q[0], k, v)
  with pytest.raises(ValueError, match='batch sizes differ'):
    attn.dot_product_attention(q, k[:1], v[:1])
  with pytest.raises(ValueError, match='kernel'):
    attn.dot_product_attention(q, k, v, kernel='flash')
  with pytest.raises(ValueError, match='not divisible'):
    attn.MultiHeadAttention(10, 3, rngs=nnx.Rngs(0))
  mha = attn.MultiHeadAttention(12, 3, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='inputs_q'):
    mha(jnp.zeros((2, 5, 8)))
  cross = attn.MultiHeadAttention(12, 3, rngs=nnx.Rngs(0), self_attention=False)
  with pytest.raises(ValueError, match='inputs_kv'):
    cross(jnp.zeros((2, 5, 12)), jnp.zeros((3, 4, 12)))
