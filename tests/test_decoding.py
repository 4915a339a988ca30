"""Greedy decoding and beam search against exhaustive search and teacher forcing."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from input_pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID
from model import decoding
from model.transformer import EncoderDecoder, shift_right
from test_transformer import SRC, tiny_config


@pytest.fixture(scope='module')
def model():
  return EncoderDecoder(tiny_config(), rngs=nnx.Rngs(0))


def sequence_log_prob(model, src_row, tokens):
  """log P(tokens | src) by teacher forcing (the non-incremental path)."""
  target = jnp.asarray([tokens])
  logits = model(jnp.asarray([src_row]), shift_right(target))
  log_probs = jax.nn.log_softmax(logits[0])
  return float(sum(log_probs[i, t] for i, t in enumerate(tokens)))


def test_greedy_follows_teacher_forced_argmax(model):
  out = np.asarray(decoding.greedy_decode(model, SRC, max_len=8))
  for row in range(SRC.shape[0]):
    prefix = []
    for _ in range(8):
      logits = model(SRC[row:row + 1], shift_right(jnp.asarray([prefix + [EOS_ID]])))
      scores = np.array(logits[0, len(prefix)])
      scores[[PAD_ID, BOS_ID]] = -np.inf
      prefix.append(int(np.argmax(scores)))
      if prefix[-1] == EOS_ID:
        break
    if prefix[-1] != EOS_ID:  # budget reached: EOS is forced
      prefix[-1] = EOS_ID
    np.testing.assert_array_equal(out[row, :len(prefix)], prefix)


def test_beam_size_one_equals_greedy(model):
  greedy = decoding.greedy_decode(model, SRC, max_len=10)
  beam, _ = decoding.beam_search(model, SRC, beam_size=1, alpha=0.0, max_len=10)
  np.testing.assert_array_equal(beam, greedy)


@pytest.mark.parametrize('beam_size', [1, 3])
def test_cached_decoding_equals_recomputing_the_prefix(model, beam_size):
  kwargs = dict(max_len=10, alpha=0.6, beam_size=beam_size)
  cached, cached_scores = decoding.beam_search(model, SRC, **kwargs)
  recomputed, scores = decoding.beam_search(model, SRC, use_cache=False, **kwargs)
  np.testing.assert_array_equal(cached, recomputed)
  np.testing.assert_allclose(cached_scores, scores, rtol=1e-5)
  np.testing.assert_array_equal(decoding.greedy_decode(model, SRC, max_len=10),
                                decoding.greedy_decode(model, SRC, max_len=10, use_cache=False))


@pytest.mark.parametrize('alpha', [0.0, 0.6, 2.0])
def test_wide_beam_finds_the_exact_best_sequence(alpha):
  """Vocabulary of 7, budget of 3 tokens: enumerate every hypothesis and score it by teacher
  forcing; a beam as wide as the number of prefixes must return the best one."""
  model = EncoderDecoder(tiny_config(vocab_size=7), rngs=nnx.Rngs(3))
  src = jnp.array([[4, 5, 6, 1]])
  allowed = [t for t in range(7) if t not in (PAD_ID, BOS_ID, EOS_ID)]
  candidates = [[EOS_ID]] + [[a, EOS_ID] for a in allowed] + [
      [a, b, EOS_ID] for a, b in itertools.product(allowed, allowed)]
  scored = [(sequence_log_prob(model, src[0], c) / decoding.length_penalty(len(c), alpha), c)
            for c in candidates]
  best_score, best = max(scored)
  out, score = decoding.beam_search(model, src, beam_size=16, alpha=alpha, max_len=3,
                                    len_a=0.0, len_b=3)
  np.testing.assert_array_equal(np.asarray(out[0, :len(best)]), best)
  np.testing.assert_allclose(float(score[0]), best_score, rtol=1e-4)


def test_outputs_stop_at_eos_within_the_length_budget(model):
  src = jnp.array([[5, 6, 1, 0, 0, 0], [5, 6, 7, 8, 9, 1]])
  limits = np.asarray(decoding.max_lengths(src, 1.0, 2, 16))
  np.testing.assert_array_equal(limits, [5, 8])  # a * (source length incl. EOS) + b
  for out in (decoding.greedy_decode(model, src, max_len=16, len_a=1.0, len_b=2),
              decoding.beam_search(model, src, max_len=16, len_a=1.0, len_b=2)[0]):
    out = np.asarray(out)
    for row, limit in enumerate(limits):
      eos = np.flatnonzero(out[row] == EOS_ID)
      assert len(eos) >= 1 and eos[0] < limit
      assert (out[row, eos[0] + 1:] == PAD_ID).all()
      assert not np.isin(out[row, :eos[0]], [PAD_ID, BOS_ID]).any()


def test_eos_suppression_gives_exactly_the_budget(model):
  kwargs = dict(max_len=12, len_a=0.0, len_b=12, allow_eos=False)
  for out in (decoding.greedy_decode(model, SRC, **kwargs),
              decoding.beam_search(model, SRC, beam_size=2, **kwargs)[0]):
    out = np.asarray(out)
    assert (out[:, -1] == EOS_ID).all()
    assert not np.isin(out[:, :-1], [PAD_ID, BOS_ID, EOS_ID]).any()


@pytest.mark.parametrize('vocab,k', [(1000, 8), (1037, 8), (997, 3), (300, 8), (40, 8)])
def test_two_stage_top_k_equals_numpy_stable_sort(vocab, k):
  # Entries drawn from few values, so ties are everywhere (including between blocks); the
  # reference orders by value, then by lower index, as lax.top_k does.
  rng = np.random.default_rng(vocab)
  x = rng.integers(-5, 5, (3, 4, vocab)).astype(np.float32)
  x[0, 0, :] = 1.0                         # one row all tied
  x[1, 1, ::7] = decoding.NEG_INF          # restricted entries
  x[2, 3, -1] = 9.0                        # the maximum in the (possibly padded) last block
  values, indices = decoding._top_k(jnp.asarray(x), k, block=16)
  order = np.argsort(-x, axis=-1, kind='stable')[..., :k]
  np.testing.assert_array_equal(np.asarray(indices), order)
  np.testing.assert_array_equal(np.asarray(values), np.take_along_axis(x, order, axis=-1))


class _EosFirst:
  """The model, with EOS made the best token at every step by a wide margin."""

  def __init__(self, model):
    self.model = model

  def __getattr__(self, name):
    return getattr(self.model, name)

  def decode_step(self, *args):
    logits, cache = self.model.decode_step(*args)
    return logits.at[:, EOS_ID].add(100.0), cache


@pytest.mark.parametrize('beam_size', [1, 3])
def test_min_len_delays_eos_to_exactly_min_len(model, beam_size):
  eos_first = _EosFirst(model)
  kwargs = dict(max_len=12, len_a=0.0, len_b=12)

  def decode(**extra):
    if beam_size == 1:
      return np.asarray(decoding.greedy_decode(eos_first, SRC, **kwargs, **extra))
    return np.asarray(decoding.beam_search(eos_first, SRC, beam_size=beam_size, **kwargs,
                                           **extra)[0])
  assert (decode()[:, 0] == EOS_ID).all()
  out = decode(min_len=4)
  assert (out[:, 4] == EOS_ID).all()  # 4 tokens, then the favoured EOS as soon as allowed
  assert not np.isin(out[:, :4], [PAD_ID, BOS_ID, EOS_ID]).any()
  # the length budget wins over min_len
  short = np.asarray(decoding.greedy_decode(eos_first, SRC, max_len=12, len_a=0.0, len_b=3,
                                            min_len=6))
  assert (short[:, 2] == EOS_ID).all()
