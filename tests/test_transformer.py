"""Properties of the encoder-decoder that follow from its definition."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import default
from model import common, transformer
from model.common import count_params, shift_right
from model.transformer import (
  EncoderDecoder,
  EncoderLayer,
  TransformerConfig,
  pointer_generator_log_probs,
  sinusoidal_positions,
)

from helpers import SRC, tiny_model_config


def make_model(**overrides):
  return EncoderDecoder(tiny_model_config(**overrides), rngs=nnx.Rngs(0))


TGT = jnp.array([[2, 11, 12, 13, 14], [2, 15, 16, 0, 0]])

VARIANTS = [
  {},
  {'layer_norm': 'post'},
  {'position_embedding': 'learned'},
  {'share_embeddings': False, 'tie_output_embedding': False},
  {'attention_kernel': 'jax'},
  {'copy_attention': True},
  {'activation': 'swiglu'},
  {'position_embedding': 'rope'},
  {'position_embedding': 'rope', 'qk_norm': 10.0},
]


def test_sinusoidal_positions_match_formula():
  table = np.asarray(sinusoidal_positions(10, 8))
  p, i = 7, 3  # dims 2i and 2i+1
  angle = p / 10000 ** (2 * i / 8)
  np.testing.assert_allclose(table[p, 2 * i], np.sin(angle), rtol=1e-5)
  np.testing.assert_allclose(table[p, 2 * i + 1], np.cos(angle), rtol=1e-5)


def test_shift_right_starts_every_packed_example_with_bos():
  targets = jnp.array([[7, 8, 1, 9, 1, 0]])
  positions = jnp.array([[0, 1, 2, 0, 1, 0]])
  np.testing.assert_array_equal(shift_right(targets, positions, bos_id=2), [[2, 7, 8, 2, 9, 2]])
  np.testing.assert_array_equal(shift_right(targets, bos_id=2), [[2, 7, 8, 1, 9, 1]])


@pytest.mark.parametrize('overrides', VARIANTS)
def test_future_tokens_do_not_change_past_outputs(overrides):
  model = make_model(**overrides)
  logits = model(SRC, TGT)
  changed = TGT.at[:, 3:].set(jnp.array([[40, 41], [42, 43]]))
  logits_changed = model(SRC, changed)
  np.testing.assert_allclose(logits[:, :3], logits_changed[:, :3], atol=1e-5)
  assert not np.allclose(logits[0, 3:], logits_changed[0, 3:])


@pytest.mark.parametrize('overrides', VARIANTS)
def test_source_padding_changes_nothing(overrides):
  model = make_model(**overrides)
  padded = jnp.pad(SRC, ((0, 0), (0, 4)))
  enc, enc_padded = model.encode(SRC), model.encode(padded)
  real = np.asarray(SRC != 0)
  np.testing.assert_allclose(np.asarray(enc)[real], np.asarray(enc_padded)[:, :6][real], atol=1e-5)
  np.testing.assert_allclose(model(SRC, TGT), model(padded, TGT), atol=1e-5)


@pytest.mark.parametrize('overrides', VARIANTS)
def test_cached_decoding_equals_teacher_forcing(overrides):
  model = make_model(**overrides)
  full = model(SRC, TGT)
  cross_kv = model.cross_kv(model.encode(SRC), heads_major=True)
  cache = model.init_cache(2, TGT.shape[1])
  for t in range(TGT.shape[1]):
    step_logits, cache = model.decode_step(TGT[:, t], cache, cross_kv, SRC)
    real = np.asarray(TGT[:, t] != 0)  # logits at padded target positions are undefined
    np.testing.assert_allclose(
      np.asarray(step_logits)[real], np.asarray(full[:, t])[real], atol=1e-5, rtol=1e-5
    )


def test_self_attention_without_positions_is_permutation_equivariant():
  layer = EncoderLayer(tiny_model_config(), rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 16)), jnp.float32)
  perm = np.random.default_rng(1).permutation(6)
  mask = jnp.ones((2, 1, 6, 6), bool)
  np.testing.assert_allclose(layer(x, mask)[:, perm], layer(x[:, perm], mask), atol=1e-5)


@pytest.mark.parametrize(
  'overrides',
  [
    {},
    {'attention_kernel': 'jax'},
    {'copy_attention': True},
    {'position_embedding': 'rope'},
    {'position_embedding': 'rope', 'qk_norm': 10.0},
  ],
)
def test_packed_examples_do_not_attend_to_each_other(overrides):
  model = make_model(**overrides)
  # Row: example A (src 3 tokens, tgt 3) then example B (src 2, tgt 2), then padding.
  src_a, tgt_a = jnp.array([[5, 6, 1]]), jnp.array([[2, 11, 12]])
  src_b, tgt_b = jnp.array([[9, 1]]), jnp.array([[2, 15]])
  packed_src = jnp.array([[5, 6, 1, 9, 1, 0]])
  packed_tgt = jnp.array([[2, 11, 12, 2, 15, 0]])
  logits = model(
    packed_src,
    packed_tgt,
    inputs_positions=jnp.array([[0, 1, 2, 0, 1, 0]]),
    targets_positions=jnp.array([[0, 1, 2, 0, 1, 0]]),
    inputs_segmentation=jnp.array([[1, 1, 1, 2, 2, 0]]),
    targets_segmentation=jnp.array([[1, 1, 1, 2, 2, 0]]),
  )
  np.testing.assert_allclose(logits[:, :3], model(src_a, tgt_a), atol=1e-5)
  np.testing.assert_allclose(logits[:, 3:5], model(src_b, tgt_b), atol=1e-5)


def test_bfloat16_activations_keep_float32_params_and_logits():
  model = make_model(dtype='bfloat16')
  params = nnx.state(model, nnx.Param)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  logits = model(SRC, TGT)
  assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()
  np.testing.assert_allclose(logits, make_model()(SRC, TGT), atol=0.15)


def test_bfloat16_matmuls_keep_float32_activations_and_gradients_close_to_float32():
  model, reference = make_model(matmul_dtype='bfloat16'), make_model()
  logits = model(SRC, TGT)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, reference(SRC, TGT), atol=0.05)
  assert not np.allclose(logits, reference(SRC, TGT), atol=1e-5)

  def grads(model):
    def loss(params):
      return jnp.mean(nnx.merge(graphdef, params, rest)(SRC, TGT) ** 2)

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return jax.tree.leaves(jax.jit(jax.grad(loss))(params))

  got, want = grads(model), grads(reference)
  assert all(g.dtype == jnp.float32 for g in got)
  # bfloat16 rounding (2^-9 relative) compounds over the layers to ~1.4% of the whole gradient
  # here; every parameter's gradient still points the float32 way (cosine >= 0.9987 measured).
  # A wrong or missing backward matmul would be off by the order of the gradient itself.
  flat_got, flat_want = (np.concatenate([np.ravel(x) for x in t]) for t in (got, want))
  assert np.linalg.norm(flat_got - flat_want) <= 0.03 * np.linalg.norm(flat_want)
  for g, w in zip(got, want):
    assert np.vdot(g, w) >= 0.99 * np.linalg.norm(g) * np.linalg.norm(w)


def _np_erf(x):
  return np.vectorize(math.erf)(x)


NP_ACTIVATIONS = {
  'relu': lambda x: np.maximum(x, 0.0),
  'gelu': lambda x: 0.5 * x * (1.0 + _np_erf(x / math.sqrt(2.0))),
  'silu': lambda x: x / (1.0 + np.exp(-x)),
}


@pytest.mark.parametrize('activation', sorted(transformer.ACTIVATIONS))
def test_mlp_block_equals_numpy_for_every_activation(activation):
  config = tiny_model_config(activation=activation)
  mlp = transformer._mlp(config, nnx.Rngs(3))
  x = np.asarray(jax.random.normal(jax.random.key(1), (2, 5, 16)), np.float64)
  w = lambda layer: (
    np.asarray(layer.kernel[...], np.float64),
    np.asarray(layer.bias[...], np.float64),
  )
  (wi, bi), (wo, bo) = w(mlp.wi), w(mlp.wo)
  if activation.endswith('glu'):  # gated: act(x W_gate) * (x W_in)
    assert mlp.wi_gate is not None
    wg, bg = w(mlp.wi_gate)
    base = {'geglu': 'gelu', 'swiglu': 'silu'}[activation]
    hidden = NP_ACTIVATIONS[base](x @ wg + bg) * (x @ wi + bi)
  else:
    assert mlp.wi_gate is None
    hidden = NP_ACTIVATIONS[activation](x @ wi + bi)
  np.testing.assert_allclose(
    np.asarray(mlp(jnp.asarray(x, jnp.float32))), hidden @ wo + bo, rtol=1e-4, atol=1e-5
  )


def test_gated_activation_adds_one_input_matrix_per_mlp():
  plain, gated = make_model(), make_model(activation='geglu')
  layers = 2 + 2
  assert count_params(gated) - count_params(plain) == layers * (16 * 32 + 32)


def test_dropout_is_random_in_training_and_off_in_evaluation():
  model = make_model(dropout_rate=0.3)
  a = model(SRC, TGT, rngs=nnx.Rngs(dropout=0))
  b = model(SRC, TGT, rngs=nnx.Rngs(dropout=1))
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(a, model(SRC, TGT, rngs=nnx.Rngs(dropout=0)))  # seeded
  np.testing.assert_array_equal(model(SRC, TGT), model(SRC, TGT))


def test_dropout_equals_nnx_dropout_given_the_same_keep_mask():
  """The model's Dropout is nnx.Dropout with a hashed keep-mask on the CPU: built for an
  accelerator, where it takes JAX's Bernoulli mask (the reference), it gives nnx.Dropout's
  values for the same key, also with a mask shared along broadcast_dims; without rngs it is
  the identity."""
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6, 8)), jnp.float32)
  for dims in ((), (-1,)):
    dropout = common.Dropout(0.3, broadcast_dims=dims, platform='tpu')
    ours = dropout(x, rngs=nnx.Rngs(dropout=7))
    theirs = nnx.Dropout(0.3, broadcast_dims=dims)(x, rngs=nnx.Rngs(dropout=7), deterministic=False)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert 0 < np.mean(np.asarray(ours) == 0) < 0.6
  np.testing.assert_array_equal(common.Dropout(0.3)(x), x)


def test_source_word_dropout_drops_whole_source_token_embeddings_only():
  model = make_model(dropout_rate=0.0, source_word_dropout=0.5)
  tokens = jnp.asarray(np.random.default_rng(0).integers(1, 50, (8, 24)))
  table = np.asarray(model.target_embed.embedding[...])  # shared source/target table
  positions = np.asarray(model.position_table[...])[:24]
  words = table[np.asarray(tokens)] * np.sqrt(16)  # [8, 24, 16], NumPy
  np.testing.assert_allclose(
    model._embed(model.target_embed, tokens, None, None, source=True),
    words + positions,
    rtol=1e-6,
    atol=1e-6,
  )
  embedded = model._embed(model.target_embed, tokens, None, nnx.Rngs(dropout=0), source=True)
  dropped = np.asarray(embedded)
  dropped = dropped - positions
  zero = np.all(dropped == 0, axis=-1)  # the whole vector or nothing: rest is 2x the embedding
  np.testing.assert_allclose(dropped[~zero], 2 * words[~zero], rtol=1e-6, atol=1e-6)
  assert 0.3 < zero.mean() < 0.7, zero.mean()  # 192 tokens at p = 0.5
  # In the model: the encoder input only; the decoder's own embeddings keep every token.
  encoded = model.encode(SRC)
  assert not np.allclose(model.encode(SRC, rngs=nnx.Rngs(dropout=1)), encoded)
  np.testing.assert_array_equal(
    model.decode(encoded, SRC, shift_right(TGT), rngs=nnx.Rngs(dropout=1)),
    model.decode(encoded, SRC, shift_right(TGT)),
  )


def test_weight_tying_shares_one_table():
  tied = count_params(make_model())
  untied = count_params(make_model(share_embeddings=False, tie_output_embedding=False))
  # Untied adds a source table (V x d) and an output projection (d x V + V).
  assert untied - tied == 50 * 16 + 16 * 50 + 50


def test_base_config_has_the_papers_parameter_count():
  config = default.get_config('base')
  config.vocab_size = 37000  # the paper's shared BPE vocabulary
  config = TransformerConfig.from_config(config)
  model = nnx.eval_shape(lambda: EncoderDecoder(config, rngs=nnx.Rngs(0)))
  n = count_params(model)
  print(f'Transformer base, 37000 shared vocab: {n:,} parameters (paper: ~65M)')
  # Independent count: embeddings + 6 encoder + 6 decoder layers + final norms.
  d, f, v = 512, 2048, 37000
  attention = 4 * (d * d + d)
  mlp = d * f + f + f * d + d
  norm = 2 * d
  expected = (
    v * d + 6 * (attention + mlp + 2 * norm) + 6 * (2 * attention + mlp + 3 * norm) + 2 * norm
  )
  assert n == expected
  assert 60e6 < n < 66e6


def test_big_config_builds_with_its_shape():
  config = TransformerConfig.from_config(default.get_config('big'))
  model = nnx.eval_shape(lambda: EncoderDecoder(config, rngs=nnx.Rngs(0)))
  assert model.encoder_layers[0].self_attention.num_heads == 16
  assert model.decoder_layers[0].mlp.wi.kernel.shape == (1024, 4096)


@pytest.mark.parametrize(
  'field,value,message',
  [
    ('num_heads', 3, r'config.num_heads=3 must divide config.emb_dim=16'),
    ('emb_dim', 0, r'config.emb_dim=0 must be a positive integer'),
    ('num_encoder_layers', -1, r'config.num_encoder_layers=-1'),
    ('attention_kernel', 'flash', r"config.attention_kernel='flash' is unknown"),
    ('dropout_rate', 1.5, r'config.dropout_rate=1.5 must be in'),
    ('source_word_dropout', 1.0, r'config.source_word_dropout=1.0 must be in'),
    ('dtype', 'float8', r"config.dtype='float8' is unknown"),
    ('matmul_dtype', 'int8', r"config.matmul_dtype='int8' is unknown"),
    ('activation', 'tanh', r"config.activation='tanh' is unknown"),
    ('qk_norm', -1.0, r'config.qk_norm=-1.0 must be >= 0'),
  ],
)
def test_bad_config_values_raise_naming_the_field(field, value, message):
  with pytest.raises(ValueError, match=message):
    make_model(**{field: value})


def test_malformed_token_inputs_raise():
  model = make_model()
  with pytest.raises(ValueError, match=r'\[batch, length\]'):
    model(SRC[0], TGT)
  with pytest.raises(ValueError, match='same batch'):
    model(SRC, TGT[:1])
  with pytest.raises(ValueError, match='exceeds config.max_len'):
    model(jnp.ones((1, 30), int), TGT[:1])


# ----------------------------------------------------------------------------- copy attention


def _copy_case(seed=0):
  """Logits [2, 3, V=7], gate logits [2, 3], attention [2, 3, S=5] over sources with a repeated
  id and padding (zero weight), as the model produces them."""
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(2, 3, 7)).astype(np.float32) * 3
  gate = rng.normal(size=(2, 3)).astype(np.float32)
  source = np.array([[4, 5, 4, 1, 0], [6, 3, 1, 0, 0]])
  scores = rng.normal(size=(2, 3, 5))
  scores = np.where((source != 0)[:, None, :], scores, -np.inf)
  attention = np.exp(scores - scores.max(-1, keepdims=True))
  attention = (attention / attention.sum(-1, keepdims=True)).astype(np.float32)
  return logits, gate, attention, source


def test_pointer_generator_mixture_matches_numpy():
  logits, gate, attention, source = _copy_case()
  got = np.asarray(pointer_generator_log_probs(logits, gate, attention, source))
  want = np.zeros_like(logits)
  for b in range(2):
    for t in range(3):
      softmax = np.exp(logits[b, t] - logits[b, t].max())
      softmax /= softmax.sum()
      p_gen = 1 / (1 + np.exp(-gate[b, t]))
      copy = np.zeros(7)
      for s, token in enumerate(source[b]):
        copy[token] += attention[b, t, s]
      want[b, t] = np.log(p_gen * softmax + (1 - p_gen) * copy)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, rtol=1e-5)
  # p_gen -> 1: the generator alone
  only_gen = pointer_generator_log_probs(logits, np.full_like(gate, 50.0), attention, source)
  np.testing.assert_allclose(only_gen, jax.nn.log_softmax(logits), atol=1e-5)


def test_pointer_generator_gradients_are_finite_and_match_probability_space():
  """Gradients through tokens that no source position holds (copy mass exactly 0) stay finite
  and equal those of the same mixture written in probability space with a one-hot matmul."""
  logits, gate, attention, source = _copy_case(1)
  targets = np.array([[4, 2, 6], [3, 5, 1]])  # 2, 6 and 5 are not in their sources

  def loss(fn, *args):
    log_p = fn(*args)
    return -jnp.sum(jnp.take_along_axis(log_p, targets[..., None], -1)) - 0.1 * jnp.sum(log_p)

  def probability_space(logits, gate, attention):
    copy = jnp.einsum('bts,bsv->btv', attention, jax.nn.one_hot(source, 7))
    p_gen = jax.nn.sigmoid(gate)[..., None]
    return jnp.log(p_gen * jax.nn.softmax(logits) + (1 - p_gen) * copy)

  grads = jax.grad(lambda *a: loss(pointer_generator_log_probs, *a, source), (0, 1, 2))(
    logits, gate, attention
  )
  reference = jax.grad(lambda *a: loss(probability_space, *a), (0, 1, 2))(logits, gate, attention)
  real = (source != 0)[:, None, :]
  for i, (got, want) in enumerate(zip(grads, reference)):
    assert np.all(np.isfinite(got))
    if i == 2:  # attention: padded positions (weight 0 by construction) get no gradient
      assert np.all(np.asarray(got)[np.broadcast_to(~real, got.shape)] == 0)
      got, want = np.where(real, got, 0), np.where(real, want, 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_copy_model_outputs_are_normalised_and_copy_the_attended_source():
  model = make_model(copy_attention=True)
  log_p, weights = model.decode(model.encode(SRC), SRC, TGT, return_weights=True)
  real = np.asarray(TGT != 0)  # padded target positions attend to nothing (and are not scored)
  np.testing.assert_allclose(np.exp(log_p).sum(-1)[real], 1.0, rtol=1e-5)
  # Rebuilt by hand from the model's own pieces: gate, logits, last layer's mean attention.
  plain = make_model()  # same seed, same parameters except the gate
  nnx.update(plain, nnx.state(model, nnx.Not(nnx.PathContains('copy_gate'))))
  logits = plain.decode(plain.encode(SRC), SRC, TGT)
  features = model.features(plain.decode(plain.encode(SRC), SRC, TGT, return_features=True))
  gate = model.copy_gate(features)[..., 0]
  want = pointer_generator_log_probs(logits, gate, jnp.mean(weights[-1], axis=1), SRC)
  np.testing.assert_allclose(log_p, want, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='attention_dropout_rate'):
    make_model(copy_attention=True, attention_dropout_rate=0.1)


def test_rope_model_has_no_position_table_and_sees_order_only_through_attention():
  """With rope the embeddings carry no positions, yet the encoder is not permutation
  equivariant (self-attention is told the positions), and odd head dims are refused."""
  model = make_model(position_embedding='rope')
  assert model.position_table is None
  table = np.asarray(model.target_embed.embedding[...])
  np.testing.assert_allclose(
    model._embed(model.target_embed, SRC, None, None),
    table[np.asarray(SRC)] * np.sqrt(16),
    rtol=1e-6,
  )
  src = jnp.array([[5, 6, 7, 8, 1]])
  perm = np.array([3, 0, 4, 1, 2])
  assert not np.allclose(model.encode(src)[:, perm], model.encode(src[:, perm]), atol=1e-3)
  with pytest.raises(ValueError, match='position_embedding.*even head dimension'):
    make_model(position_embedding='rope', emb_dim=18, num_heads=2)
