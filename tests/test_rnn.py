"""The recurrent encoder-decoder: its cells, scores and attention against NumPy written from the
formulas, packing and padding, step-by-step decoding against teacher forcing, and training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import default, rnn_attention
from evaluation.evaluate import attention_maps, plot_attention
from evaluation.runs import load_run, restore
from model import decoding
from model.architectures import build_model
from model.attention import additive_scores, dot_scores
from model.common import count_params, shift_right
from model.rnn import RNNConfig, RNNEncoderDecoder
from model.transformer import EncoderDecoder
from training.trainer import train_and_evaluate

from helpers import SRC, loss_and_grads, losses, tiny_model_config, tiny_run_config

COMBINATIONS = [('gru', 'additive'), ('lstm', 'dot'), ('gru', 'general')]


def tiny_rnn(cell='gru', score='additive', seed=0, **overrides):
  config = default.get_config()
  config.update(
    architecture='rnn',
    vocab_size=50,
    emb_dim=16,
    rnn_hidden_dim=24,
    num_encoder_layers=2,
    num_decoder_layers=2,
    max_len=24,
    rnn_cell=cell,
    rnn_attention=score,
    dropout_rate=0.0,
    matmul_dtype='float32',  # exact float32 references
  )
  config.update(overrides)
  return RNNEncoderDecoder(RNNConfig.from_config(config), rngs=nnx.Rngs(seed))


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def softmax(x, mask):
  e = np.where(mask, np.exp(x - np.max(np.where(mask, x, -np.inf), -1, keepdims=True)), 0.0)
  return e / e.sum(-1, keepdims=True)


def numpy_cell(cell, x, carry, w, u, b, b_hn):
  """The GRU and LSTM equations of model/rnn.py's RecurrentCell, in NumPy."""
  gates = x @ w + b
  recurrent = carry[0] @ u
  if cell == 'gru':
    (x_r, x_z, x_n), (h_r, h_z, h_n) = np.split(gates, 3, -1), np.split(recurrent, 3, -1)
    r, z = sigmoid(x_r + h_r), sigmoid(x_z + h_z)
    n = np.tanh(x_n + r * (h_n + b_hn))
    return ((1 - z) * n + z * carry[0],)
  i, f, g, o = np.split(gates + recurrent, 4, -1)
  c = sigmoid(f) * carry[1] + sigmoid(i) * np.tanh(g)
  return (sigmoid(o) * np.tanh(c), c)


@pytest.mark.parametrize('cell', ['gru', 'lstm'])
def test_a_cell_step_is_its_equations(cell):
  model = tiny_rnn(cell)
  layer = model.decoder_cells[1]  # hidden 24 -> 24
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 24)).astype(np.float32)
  carry = tuple(
    rng.normal(size=(3, 24)).astype(np.float32) for _ in range(2 if cell == 'lstm' else 1)
  )
  got = layer.step(tuple(map(jnp.asarray, carry)), layer.project_inputs(jnp.asarray(x)))
  b_hn = None if layer.hidden_bias is None else np.asarray(layer.hidden_bias[...])
  expected = numpy_cell(
    cell,
    x,
    carry,
    np.asarray(layer.input_kernel[...]),
    np.asarray(layer.hidden_kernel[...]),
    np.asarray(layer.bias[...]),
    b_hn,
  )
  for a, b in zip(got, expected, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_score_functions_are_their_formulas():
  rng = np.random.default_rng(1)
  query = rng.normal(size=(2, 3, 8)).astype(np.float32)  # 2 sources, 3 rows (beams) each
  keys = rng.normal(size=(2, 5, 8)).astype(np.float32)
  v = rng.normal(size=(8,)).astype(np.float32)
  additive = np.array(
    [
      [[v @ np.tanh(query[n, r] + keys[n, s]) for s in range(5)] for r in range(3)]
      for n in range(2)
    ]
  )
  dot = np.array(
    [[[query[n, r] @ keys[n, s] for s in range(5)] for r in range(3)] for n in range(2)]
  )
  np.testing.assert_allclose(additive_scores(query, keys, v), additive, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dot_scores(query, keys), dot, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('cell,score', COMBINATIONS)
def test_a_decoder_step_attends_as_the_formulas_say(cell, score):
  """s_t from the stacked cells, e_tj = score(s_t, h_j), a_t = softmax over the real source
  tokens, c_t = sum_j a_tj h_j and h~_t = tanh(W_c [c_t; s_t]), in NumPy from the step's s_t."""
  model = tiny_rnn(cell, score)
  rng = np.random.default_rng(2)
  annotations = rng.normal(size=(2, 6, 24)).astype(np.float32)
  valid = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], bool)
  states = tuple(
    tuple(
      jnp.asarray(rng.normal(size=(2, 24)), jnp.float32) for _ in range(2 if cell == 'lstm' else 1)
    )
    for _ in range(2)
  )
  feed = jnp.asarray(rng.normal(size=(2, 16)), jnp.float32)
  embedded = jnp.asarray(rng.normal(size=(2, 16)), jnp.float32)
  memory = model.cross_kv(jnp.asarray(annotations))
  (new_states, _), (attentional, weights) = model._decoder_step(  # pylint: disable=protected-access
    (states, feed), embedded, memory, jnp.asarray(valid)[:, None, :], None
  )
  s = np.asarray(new_states[-1][0])
  if score == 'additive':
    w = np.asarray(model.query_kernel.kernel[...])
    u, b = np.asarray(model.key_kernel.kernel[...]), np.asarray(model.key_kernel.bias[...])
    v = np.asarray(model.score_vector[...])
    e = np.einsum('nsd,d->ns', np.tanh((s @ w)[:, None, :] + annotations @ u + b), v)
  elif score == 'dot':
    e = np.einsum('nd,nsd->ns', s, annotations)
  else:  # general: s_t W_a h_j with W_a = the key kernel's transpose
    w_a = np.asarray(model.key_kernel.kernel[...]).T
    e = np.einsum('nd,de,nse->ns', s, w_a, annotations)
  a = softmax(e, valid)
  c = np.einsum('ns,nsd->nd', a, annotations)
  h = np.tanh(np.concatenate([c, s], -1) @ np.asarray(model.combine.kernel[...]))
  np.testing.assert_allclose(weights, a, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(attentional, h, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(weights)[~valid] == 0.0)


@pytest.mark.parametrize('cell,score', COMBINATIONS)
def test_step_by_step_decoding_equals_teacher_forcing(cell, score):
  model = tiny_rnn(cell, score)
  targets = jnp.array([[11, 12, 13, 14, 1], [15, 16, 1, 0, 0]])
  decoder_inputs = shift_right(targets)
  forced = model(SRC, decoder_inputs)
  cross_kv, cache, stepped = model.cross_kv(model.encode(SRC)), model.init_cache(2, 5), []
  for t in range(5):
    logits, cache = model.decode_step(decoder_inputs[:, t], cache, cross_kv, SRC)
    stepped.append(logits)
  real = np.asarray(targets != 0)
  np.testing.assert_allclose(
    np.asarray(jnp.stack(stepped, 1))[real], np.asarray(forced)[real], rtol=1e-5, atol=1e-5
  )


@pytest.mark.parametrize('cell', ['gru', 'lstm'])
def test_a_packed_row_gives_each_example_its_own_logits(cell):
  """Two examples in one row (segment ids) get the logits each gets alone: the forward and the
  backward encoder and the decoder restart at each example, and attention stays inside it."""
  model = tiny_rnn(cell)
  examples = [([5, 6, 7, 1], [8, 9, 1]), ([10, 11, 1], [12, 13, 14, 1])]
  alone = [
    np.asarray(model(jnp.array([src]), shift_right(jnp.array([tgt]))))[0] for src, tgt in examples
  ]

  def packed(side):
    tokens = [t for ex in examples for t in ex[side]] + [0]
    segments = [i + 1 for i, ex in enumerate(examples) for _ in ex[side]] + [0]
    positions = [p for ex in examples for p in range(len(ex[side]))] + [0]
    return jnp.array([tokens]), jnp.array([segments]), jnp.array([positions])

  inputs, inputs_segmentation, _ = packed(0)
  targets, targets_segmentation, targets_positions = packed(1)
  logits = model(
    inputs,
    shift_right(targets, targets_positions),
    inputs_segmentation=inputs_segmentation,
    targets_segmentation=targets_segmentation,
  )[0]
  np.testing.assert_allclose(logits[:3], alone[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits[3:7], alone[1], rtol=1e-5, atol=1e-5)


def test_padding_changes_nothing_and_gets_no_attention():
  model = tiny_rnn()
  targets = jnp.array([[11, 12, 1], [15, 1, 0]])
  logits = model(SRC, shift_right(targets))
  wider_src, wider_tgt = jnp.pad(SRC, ((0, 0), (0, 4))), jnp.pad(targets, ((0, 0), (0, 3)))
  encoded = model.encode(wider_src)
  wider, weights = model.decode(encoded, wider_src, shift_right(wider_tgt), return_weights=True)
  real = np.asarray(targets != 0)
  np.testing.assert_allclose(np.asarray(wider)[:, :3][real], np.asarray(logits)[real], rtol=1e-5)
  (weights,) = weights  # one layer, one head: [batch, 1, tgt_len, src_len]
  assert np.all(np.asarray(weights)[:, 0][np.asarray(wider_src == 0)[:, None, :].repeat(6, 1)] == 0)


def test_cached_searches_equal_recomputing_the_prefix():
  """Beam search and greedy decoding with the recurrent state as their cache (reordered with the
  beams) find what teacher forcing over each prefix finds, in groups too."""
  model = tiny_rnn('lstm', 'general')
  kwargs = dict(max_len=10, alpha=0.6, beam_size=3)
  cached, cached_scores = decoding.beam_search(model, SRC, **kwargs)
  recomputed, scores = decoding.beam_search(model, SRC, use_cache=False, **kwargs)
  grouped, _ = decoding.beam_search(model, SRC, groups=2, **kwargs)
  np.testing.assert_array_equal(cached, recomputed)
  np.testing.assert_array_equal(grouped, cached)
  np.testing.assert_allclose(cached_scores, scores, rtol=1e-5)
  np.testing.assert_array_equal(
    decoding.greedy_decode(model, SRC, max_len=10),
    decoding.greedy_decode(model, SRC, max_len=10, use_cache=False),
  )


def test_an_rnn_and_a_transformer_decode_as_one_ensemble():
  members = [tiny_rnn(), EncoderDecoder(tiny_model_config(), rngs=nnx.Rngs(1))]
  kwargs = dict(beam_size=3, alpha=0.6, max_len=10)
  ensemble = decoding.Ensemble(members)
  out, scores = decoding.beam_search(ensemble, SRC, **kwargs)
  recomputed, recomputed_scores = decoding.beam_search(ensemble, SRC, use_cache=False, **kwargs)
  np.testing.assert_array_equal(out, recomputed)
  np.testing.assert_allclose(scores, recomputed_scores, rtol=1e-5)


def test_the_config_matches_transformer_tiny_in_size():
  sizes = {}
  for name, config in (('rnn', rnn_attention.get_config()), ('transformer', default.get_config())):
    sizes[name] = count_params(nnx.eval_shape(lambda c=config: build_model(c, nnx.Rngs(0))))
  assert sizes['rnn'] == 2_569_216 and sizes['transformer'] == 2_613_772
  assert abs(sizes['rnn'] / sizes['transformer'] - 1) < 0.02


def test_the_fused_loss_takes_the_attentional_vectors(tmp_path):
  config = tiny_run_config(tmp_path, architecture='rnn', rnn_hidden_dim=32, dropout_rate=0.2)
  (plain, plain_grads), (fused, fused_grads) = [loss_and_grads(config, c) for c in (0, 16)]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), plain, fused)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), plain_grads, fused_grads
  )


def test_train_and_evaluate_trains_the_rnn(tmp_path):
  config = tiny_run_config(
    tmp_path, architecture='rnn', rnn_hidden_dim=32, num_train_steps=30, rnn_cell='lstm'
  )
  metrics = train_and_evaluate(config, str(tmp_path / 'run'))
  history = losses(tmp_path / 'run')
  assert history[-1] < history[0] - 0.3
  assert 'eval/bleu' in metrics and np.isfinite(metrics['eval/nll'])
  # eval.py's attention maps: one cross-attention head, no encoder self-attention
  config, tok = load_run(str(tmp_path / 'run'))
  config.beam_size = 1
  src, out, enc, cross = attention_maps(restore(str(tmp_path / 'run'), config, tok), 'a b c d')
  assert enc == [] and len(cross) == 1 and cross[0].shape == (1, len(out), len(src))
  np.testing.assert_allclose(cross[0].sum(-1), 1.0, atol=1e-5)
  plot_attention(src, out, enc, cross, str(tmp_path / 'attention.png'))
  assert (tmp_path / 'attention.png').read_bytes()[:4] == b'\x89PNG'
