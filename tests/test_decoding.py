"""Greedy decoding and beam search against exhaustive search and teacher forcing."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from input_pipeline.tokenizer import BOS_ID, EOS_ID, PAD_ID
from model import decoding
from model.common import shift_right
from model.transformer import EncoderDecoder

from helpers import SRC, tiny_model_config


@pytest.fixture(scope='module')
def model():
  return EncoderDecoder(tiny_model_config(), rngs=nnx.Rngs(0))


# The references run the model's non-incremental path (teacher forcing) through one compiled
# forward pass: targets are padded to one length, which changes no earlier position's output
# (the decoder is causal; test_transformer tests it).
forward = nnx.jit(lambda model, src, tgt: model(src, shift_right(tgt)))


def sequence_log_probs(model, src_row, sequences, bonus=0.0):
  """log P(tokens | src) of each sequence by teacher forcing, with `bonus` added to the logits
  (as `_Favouring` adds it in the search)."""
  width = max(map(len, sequences))
  targets = jnp.asarray([list(c) + [PAD_ID] * (width - len(c)) for c in sequences])
  src = jnp.repeat(jnp.asarray([src_row]), len(sequences), axis=0)
  log_probs = np.asarray(jax.nn.log_softmax(forward(model, src, targets) + bonus))
  return [
    float(sum(log_probs[row, i, t] for i, t in enumerate(c))) for row, c in enumerate(sequences)
  ]


def teacher_forced_greedy(scores, src, steps=8):
  """Greedy decoding by teacher forcing: scores(src [1, len], targets [1, steps + 1]) gives
  [1, steps + 1, vocab] next-token scores; returns the tokens up to EOS (forced at the budget)."""
  prefix = []
  for _ in range(steps):
    padded = prefix + [EOS_ID] + [PAD_ID] * (steps - len(prefix))
    next_scores = np.array(scores(src, jnp.asarray([padded]))[0, len(prefix)])
    next_scores[[PAD_ID, BOS_ID]] = -np.inf
    prefix.append(int(np.argmax(next_scores)))
    if prefix[-1] == EOS_ID:
      break
  if prefix[-1] != EOS_ID:  # budget reached: EOS is forced
    prefix[-1] = EOS_ID
  return prefix


def test_greedy_follows_teacher_forced_argmax(model):
  out = np.asarray(decoding.greedy_decode(model, SRC, max_len=8))
  for row in range(SRC.shape[0]):
    prefix = teacher_forced_greedy(lambda src, tgt: forward(model, src, tgt), SRC[row : row + 1])
    np.testing.assert_array_equal(out[row, : len(prefix)], prefix)


def test_beam_size_one_equals_greedy(model):
  greedy = decoding.greedy_decode(model, SRC, max_len=10)
  beam, _ = decoding.beam_search(model, SRC, beam_size=1, alpha=0.0, max_len=10)
  np.testing.assert_array_equal(beam, greedy)


@pytest.mark.parametrize('beam_size', [1, 3])
@pytest.mark.parametrize('copy_attention', [False, True])
def test_cached_decoding_equals_recomputing_the_prefix(model, beam_size, copy_attention):
  # The cached path reads one copy of a source's cross-attention keys and values for all its
  # beams (and, with copy attention, splits their weights back per beam); recomputing repeats them.
  if copy_attention:
    model = EncoderDecoder(tiny_model_config(copy_attention=True), rngs=nnx.Rngs(0))
  kwargs = dict(max_len=10, alpha=0.6, beam_size=beam_size)
  cached, cached_scores = decoding.beam_search(model, SRC, **kwargs)
  recomputed, scores = decoding.beam_search(model, SRC, use_cache=False, **kwargs)
  np.testing.assert_array_equal(cached, recomputed)
  np.testing.assert_allclose(cached_scores, scores, rtol=1e-5)
  np.testing.assert_array_equal(
    decoding.greedy_decode(model, SRC, max_len=10),
    decoding.greedy_decode(model, SRC, max_len=10, use_cache=False),
  )


def test_beam_search_in_concurrent_groups_equals_one_search(model):
  # Five sources of different lengths, so that the groups' loops stop at different steps; 3
  # groups split them unevenly (1, 2, 2).
  rng = np.random.default_rng(0)
  src = np.zeros((5, 7), np.int32)
  for row, length in enumerate([6, 2, 4, 5, 3]):
    src[row, :length] = rng.integers(4, 50, length)
    src[row, length] = EOS_ID
  # Compiled whole, as eval.py runs it; 8 groups are clamped to one per source.
  search = nnx.jit(
    decoding.beam_search, static_argnames=('groups', 'beam_size', 'alpha', 'max_len')
  )
  kwargs = dict(beam_size=3, alpha=0.6, max_len=14)
  out, scores = search(model, jnp.asarray(src), **kwargs)
  assert len(set(np.argmax(np.asarray(out) == EOS_ID, axis=1))) > 1  # they end at different steps
  for groups in (2, 3, 8):
    grouped, grouped_scores = search(model, jnp.asarray(src), groups=groups, **kwargs)
    np.testing.assert_array_equal(grouped, out)
    # float32 rounding apart: matmul kernels may sum a smaller batch in another order
    np.testing.assert_allclose(grouped_scores, scores, rtol=1e-6)
  assert decoding.auto_beam_groups(3) == 3
  assert decoding.auto_beam_groups(0) in (1, 2)


@pytest.mark.parametrize('alpha', [0.0, 0.6, 2.0])
def test_wide_beam_finds_the_exact_best_sequence(alpha):
  """Vocabulary of 7, budget of 3 tokens: enumerate every hypothesis and score it by teacher
  forcing; a beam as wide as the number of prefixes must return the best one."""
  model = EncoderDecoder(tiny_model_config(vocab_size=7), rngs=nnx.Rngs(3))
  src = jnp.array([[4, 5, 6, 1]])
  allowed = [t for t in range(7) if t not in (PAD_ID, BOS_ID, EOS_ID)]
  candidates = (
    [[EOS_ID]]
    + [[a, EOS_ID] for a in allowed]
    + [[a, b, EOS_ID] for a, b in itertools.product(allowed, allowed)]
  )
  scored = [
    (lp / decoding.length_penalty(len(c), alpha), c)
    for lp, c in zip(sequence_log_probs(model, src[0], candidates), candidates)
  ]
  best_score, best = max(scored)
  out, score = decoding.beam_search(
    model, src, beam_size=16, alpha=alpha, max_len=3, len_a=0.0, len_b=3
  )
  np.testing.assert_array_equal(np.asarray(out[0, : len(best)]), best)
  np.testing.assert_allclose(float(score[0]), best_score, rtol=1e-4)
  # n_best: the 16 best of all 21 hypotheses, best first, each with its own score.
  n_out, n_scores = decoding.beam_search(
    model, src, beam_size=16, alpha=alpha, max_len=3, len_a=0.0, len_b=3, n_best=True
  )
  assert n_out.shape == (1, 16, 3) and n_scores.shape == (1, 16)
  np.testing.assert_array_equal(n_out[0, 0], out[0])
  expected = sorted(scored, reverse=True)[:16]
  np.testing.assert_allclose(np.asarray(n_scores[0]), [s for s, _ in expected], rtol=1e-4)
  for row, (_, hypothesis) in zip(np.asarray(n_out[0]), expected):
    np.testing.assert_array_equal(row[: len(hypothesis)], hypothesis)


# A second member unlike the first: other weights, width and depth, and (one variant) copy
# attention, whose outputs are log-probabilities already.
SECOND_MEMBERS = [dict(emb_dim=24, num_heads=3, num_decoder_layers=1), dict(copy_attention=True)]


def ensemble_log_probs(models, src, targets):
  """[batch, len, vocab] log of the members' mean teacher-forced probabilities (NumPy)."""
  probs = [
    np.exp(np.asarray(jax.nn.log_softmax(forward(m, src, targets)), np.float64)) for m in models
  ]
  return np.log(np.mean(probs, axis=0))


@pytest.mark.parametrize('second', SECOND_MEMBERS)
def test_ensemble_greedy_follows_the_members_mean_probabilities(model, second):
  members = [model, EncoderDecoder(tiny_model_config(**second), rngs=nnx.Rngs(1))]
  out = np.asarray(decoding.greedy_decode(decoding.Ensemble(members), SRC, max_len=8))
  for row in range(SRC.shape[0]):
    prefix = teacher_forced_greedy(
      functools.partial(ensemble_log_probs, members), SRC[row : row + 1]
    )
    np.testing.assert_array_equal(out[row, : len(prefix)], prefix)
  # the mean decides: on these sources it picks other tokens than either member alone
  for member in members:
    assert not np.array_equal(out, decoding.greedy_decode(member, SRC, max_len=8))


@pytest.mark.parametrize('second', SECOND_MEMBERS)
def test_ensemble_beam_scores_are_the_mean_probabilities_log_likelihood(model, second):
  second_model = EncoderDecoder(tiny_model_config(**second), rngs=nnx.Rngs(1))
  ensemble = decoding.Ensemble([model, second_model])
  kwargs = dict(beam_size=3, alpha=0.6, max_len=10)
  out, scores = decoding.beam_search(ensemble, SRC, **kwargs)
  recomputed, recomputed_scores = decoding.beam_search(ensemble, SRC, use_cache=False, **kwargs)
  np.testing.assert_array_equal(out, recomputed)
  np.testing.assert_allclose(scores, recomputed_scores, rtol=1e-5)
  out = np.asarray(out)
  for row in range(SRC.shape[0]):
    length = int(np.argmax(out[row] == EOS_ID)) + 1
    log_probs = ensemble_log_probs(
      ensemble.models, SRC[row : row + 1], jnp.asarray(out[row : row + 1])
    )
    expected = sum(log_probs[0, i, t] for i, t in enumerate(out[row, :length]))
    np.testing.assert_allclose(
      float(scores[row]), expected / decoding.length_penalty(length, 0.6), rtol=1e-4
    )


def test_an_ensemble_of_copies_of_one_model_is_that_model(model):
  kwargs = dict(beam_size=3, alpha=0.6, max_len=10)
  out, scores = decoding.beam_search(model, SRC, **kwargs)
  for members in ([model], [model, model]):
    ensemble_out, ensemble_scores = decoding.beam_search(decoding.Ensemble(members), SRC, **kwargs)
    np.testing.assert_array_equal(ensemble_out, out)
    np.testing.assert_allclose(ensemble_scores, scores, rtol=1e-5)


def has_repeated_ngram(tokens, n):
  grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
  return len(set(grams)) < len(grams)


class _Favouring:
  """The model, with a bonus added to the logits of a few tokens at every step."""

  def __init__(self, model, bonus):
    self.model, self.bonus = model, bonus

  def __getattr__(self, name):
    return getattr(self.model, name)

  def decode_step(self, *args):
    logits, cache = self.model.decode_step(*args)
    return logits + self.bonus, cache


WORD_START = np.arange(7) % 2 == 0  # even ids begin a word (PAD 0 and BOS 2 never occur)


@pytest.mark.parametrize(
  'constraint,keep,favoured',
  [
    (dict(no_repeat_ngram=1), lambda c: not has_repeated_ngram(c[:-1], 1), {5: 5.0}),
    (
      dict(min_words=2, word_start=jnp.asarray(WORD_START)),
      lambda c: WORD_START[c[:-1]].sum() >= 2 or len(c) == 3,  # at the budget: EOS
      {5: 3.0, EOS_ID: 3.0},
    ),
    (dict(min_len=2, no_repeat_ngram=1), lambda c: len(c) == 3 and c[0] != c[1], {5: 3.0}),
  ],
)
def test_wide_beam_finds_the_best_sequence_that_meets_the_constraint(constraint, keep, favoured):
  """As above, with tokens favoured (5, not word-initial; EOS) so that the constraint binds by a
  clear margin, over only the hypotheses that meet it (EOS excluded from it; the length budget
  wins over a minimum)."""
  model = EncoderDecoder(tiny_model_config(vocab_size=7), rngs=nnx.Rngs(3))
  bonus = jnp.zeros(7).at[jnp.asarray(list(favoured))].set(jnp.asarray(list(favoured.values())))
  src = jnp.array([[4, 5, 6, 1]])
  allowed = [t for t in range(7) if t not in (PAD_ID, BOS_ID, EOS_ID)]
  candidates = (
    [[EOS_ID]]
    + [[a, EOS_ID] for a in allowed]
    + [[a, b, EOS_ID] for a, b in itertools.product(allowed, allowed)]
  )

  scores = [
    lp / decoding.length_penalty(len(c), 0.6)
    for lp, c in zip(sequence_log_probs(model, src[0], candidates, bonus), candidates)
  ]
  best_score, best = max((score, c) for score, c in zip(scores, candidates) if keep(c))
  assert max(scores) > best_score + 0.1  # the constraint binds
  kwargs = dict(beam_size=16, max_len=3, len_a=0.0, len_b=3)
  unconstrained = decoding.beam_search(_Favouring(model, bonus), src, **kwargs)
  out, out_score = decoding.beam_search(_Favouring(model, bonus), src, **kwargs, **constraint)
  np.testing.assert_array_equal(np.asarray(out[0, : len(best)]), best)
  np.testing.assert_allclose(float(out_score[0]), best_score, rtol=1e-4)
  assert float(unconstrained[1][0]) > best_score  # the constraint did change the search


def test_repeated_ngram_tokens_match_a_python_scan():
  rng = np.random.default_rng(0)
  seqs = rng.integers(3, 7, (5, 12))  # 4 token values: repeats everywhere
  for n in (1, 2, 3):
    for t in range(13):
      prefix = np.where(np.arange(12) < t, seqs, PAD_ID)
      banned = np.asarray(decoding._repeated_ngram_tokens(jnp.asarray(prefix), t, n, 9))
      for row in range(5):
        so_far = list(seqs[row, :t])
        expect = np.zeros(9, bool)
        for i in range(t - n + 1):
          if so_far[i : i + n - 1] == so_far[t - n + 1 :]:
            expect[so_far[i + n - 1]] = True
        np.testing.assert_array_equal(banned[row], expect, err_msg=f'n={n} t={t} row={row}')


@pytest.mark.parametrize('n', [1, 2, 3])
def test_greedy_without_repeated_ngrams_equals_a_teacher_forced_loop(model, n):
  """Tokens 5 and 6 favoured (the model would repeat them); at each step the reference takes
  the teacher-forced argmax over the tokens that would not repeat an n-gram."""
  bonus = jnp.zeros(50).at[5].set(30.0).at[6].set(20.0).at[EOS_ID].set(-30.0)
  favouring = _Favouring(model, bonus)
  out = np.asarray(
    decoding.greedy_decode(favouring, SRC, max_len=10, len_a=0.0, len_b=10, no_repeat_ngram=n)
  )
  for row in range(SRC.shape[0]):
    tokens = []
    while len(tokens) < 9:
      padded = tokens + [PAD_ID] * (10 - len(tokens))
      logits = forward(model, SRC[row : row + 1], jnp.asarray([padded]))[0, len(tokens)] + bonus
      logits = np.array(logits)
      logits[[PAD_ID, BOS_ID]] = -np.inf
      for i in range(len(tokens) - n + 1):
        if tokens[i : i + n - 1] == tokens[len(tokens) - n + 1 :]:
          logits[tokens[i + n - 1]] = -np.inf
      tokens.append(int(np.argmax(logits)))
      if tokens[-1] == EOS_ID:
        break
    else:
      tokens.append(EOS_ID)  # the budget: EOS at position 9
    np.testing.assert_array_equal(out[row, : len(tokens)], tokens)
    assert not has_repeated_ngram(tokens[:-1], n)
    assert tokens[:2] == ([5, 6] if n == 1 else [5, 5])


def test_outputs_stop_at_eos_within_the_length_budget(model):
  src = jnp.array([[5, 6, 1, 0, 0, 0], [5, 6, 7, 8, 9, 1]])
  limits = np.asarray(decoding.max_lengths(src, 1.0, 2, 16))
  np.testing.assert_array_equal(limits, [5, 8])  # a * (source length incl. EOS) + b
  for out in (
    decoding.greedy_decode(model, src, max_len=16, len_a=1.0, len_b=2),
    decoding.beam_search(model, src, max_len=16, len_a=1.0, len_b=2)[0],
  ):
    out = np.asarray(out)
    for row, limit in enumerate(limits):
      eos = np.flatnonzero(out[row] == EOS_ID)
      assert len(eos) >= 1 and eos[0] < limit
      assert (out[row, eos[0] + 1 :] == PAD_ID).all()
      assert not np.isin(out[row, : eos[0]], [PAD_ID, BOS_ID]).any()


def test_eos_suppression_gives_exactly_the_budget(model):
  kwargs = dict(max_len=12, len_a=0.0, len_b=12, allow_eos=False)
  for out in (
    decoding.greedy_decode(model, SRC, **kwargs),
    decoding.beam_search(model, SRC, beam_size=2, **kwargs)[0],
  ):
    out = np.asarray(out)
    assert (out[:, -1] == EOS_ID).all()
    assert not np.isin(out[:, :-1], [PAD_ID, BOS_ID, EOS_ID]).any()


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
  eos_first = _Favouring(model, jnp.zeros(50).at[EOS_ID].set(100.0))  # EOS best by far
  kwargs = dict(max_len=12, len_a=0.0, len_b=12)

  def decode(**extra):
    if beam_size == 1:
      return np.asarray(decoding.greedy_decode(eos_first, SRC, **kwargs, **extra))
    return np.asarray(
      decoding.beam_search(eos_first, SRC, beam_size=beam_size, **kwargs, **extra)[0]
    )

  assert (decode()[:, 0] == EOS_ID).all()
  out = decode(min_len=4)
  assert (out[:, 4] == EOS_ID).all()  # 4 tokens, then the favoured EOS as soon as allowed
  assert not np.isin(out[:, :4], [PAD_ID, BOS_ID, EOS_ID]).any()
  # the length budget wins over min_len
  short = np.asarray(
    decoding.greedy_decode(eos_first, SRC, max_len=12, len_a=0.0, len_b=3, min_len=6)
  )
  assert (short[:, 2] == EOS_ID).all()


@pytest.mark.parametrize('beam_size', [1, 3])
def test_min_words_ends_right_after_the_third_word_initial_token(model, beam_size):
  """EOS favoured most, then tokens 5, 6, 7, ... in that order, each used once (no_repeat 1);
  even ids begin words. Greedy: 5 6 7 8 9 10 EOS, three words (6, 8, 10); the beam may reorder
  tokens (the sum of bonuses is the same) but ends as soon as the third word has begun."""
  bonus = jnp.zeros(50).at[EOS_ID].set(200.0).at[5:20].set(100.0 - 5.0 * jnp.arange(15))
  favouring = _Favouring(model, bonus)
  starts = jnp.arange(50) % 2 == 0
  kwargs = dict(max_len=12, len_a=0.0, len_b=12, no_repeat_ngram=1, min_words=3, word_start=starts)
  out = (
    decoding.greedy_decode(favouring, SRC, **kwargs)
    if beam_size == 1
    else decoding.beam_search(favouring, SRC, beam_size=beam_size, **kwargs)[0]
  )
  out = np.asarray(out)
  if beam_size == 1:
    np.testing.assert_array_equal(out[:, :7], [[5, 6, 7, 8, 9, 10, EOS_ID]] * 2)
  for row in out:
    words = np.asarray(starts)[row[: list(row).index(EOS_ID)]]
    assert words.sum() == 3 and words[-1]
