"""Greedy decoding and beam search (GNMT length penalty) over `EncoderDecoder.decode_step`, for
one model or an `Ensemble` of several.

Pure functions of a model and arrays; call them inside `jax.jit`. Each sequence stops at EOS or
at its own maximum length `a * source_length + b` (EOS is forced there). With `use_cache=False`
every step recomputes the decoder over the whole prefix instead of reading the KV cache (the
reference path the cache is tested and benchmarked against).
"""

import jax
import jax.numpy as jnp

from model.fast_ops import techniques
from model.special_tokens import BOS_ID, EOS_ID, PAD_ID

NEG_INF = -1.0e7


def length_penalty(length, alpha: float):
  """GNMT (Wu et al. 2016): ((5 + |Y|) / 6) ** alpha."""
  return ((5.0 + length) / 6.0) ** alpha


def max_lengths(inputs, a: float, b: int, limit: int):
  """Per-example output budget a * source_length + b (source length counts EOS), <= limit."""
  source_len = jnp.sum(inputs != PAD_ID, axis=-1)
  return jnp.minimum(jnp.floor(a * source_len + b).astype(jnp.int32), limit)


class Ensemble:
  """Several models decoding as one (fairseq's and Marian's ensembles): at each step the
  log of the mean of the members' next-token probabilities, log (1/M) sum_m softmax(logits_m).

  Exposes the model methods the searches call (encode, cross_kv, init_cache, decode_step,
  decode), each member with its own encoder output and cache, so `greedy_decode` and
  `beam_search` take an Ensemble wherever they take a model. The members must share the
  vocabulary (token ids) and may differ in anything else (width, depth, copy attention: a
  member's log-probabilities are normalised again, which leaves normalised ones unchanged).
  """

  def __init__(self, models):
    if not models:
      raise ValueError('an Ensemble needs at least one model.')
    self.models = tuple(models)

  @property
  def platform(self) -> str:
    """The platform the members' programs are built for (fast_ops.techniques)."""
    return self.models[0].platform

  def _mean_probs(self, logits):
    # One exp per member and entry, reused for the normaliser and the probabilities, and one
    # log: passes over the vocabulary are costly on XLA:CPU (benchmarks/decode.py --members=2,
    # beam 4: 28.8 sentences/s with log_softmax + logsumexp, 49.6 so; one model 101.6). A token
    # whose mean probability underflows float32 gets -inf: never chosen.
    mean = 0.0
    for x in logits:
      e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
      mean = mean + e / (len(logits) * jnp.sum(e, axis=-1, keepdims=True))
    return jnp.log(mean)

  def encode(self, inputs):
    return tuple(m.encode(inputs) for m in self.models)

  def cross_kv(self, encoded, heads_major: bool = False):
    return tuple(m.cross_kv(e, heads_major) for m, e in zip(self.models, encoded))

  def init_cache(self, batch_size: int, max_len: int):
    return tuple(m.init_cache(batch_size, max_len) for m in self.models)

  def decode_step(self, tokens, cache, cross_kv, inputs):
    """As `EncoderDecoder.decode_step`: (ensemble log-probabilities [batch, vocab], caches)."""
    steps = [m.decode_step(tokens, c, kv, inputs) for m, c, kv in zip(self.models, cache, cross_kv)]
    return self._mean_probs([logits for logits, _ in steps]), tuple(c for _, c in steps)

  def decode(self, encoded, inputs, decoder_inputs):
    """As `EncoderDecoder.decode` (teacher forcing): ensemble log-probabilities."""
    return self._mean_probs(
      [m.decode(e, inputs, decoder_inputs) for m, e in zip(self.models, encoded)]
    )


def _stepper(model, inputs, batch_repeat: int, max_len: int, use_cache: bool):
  """Returns (init_state, step(state, tokens [n], t) -> (logits [n, V] float32, state))."""
  encoded = model.encode(inputs)
  if use_cache:
    # Per source, not per beam: a source's beams read one copy of its keys and values.
    cross_kv = model.cross_kv(encoded, heads_major=True)
    inputs = jnp.repeat(inputs, batch_repeat, axis=0)

    def step(cache, tokens, t):
      del t
      return model.decode_step(tokens, cache, cross_kv, inputs)

    return model.init_cache(inputs.shape[0], max_len), step

  encoded = jax.tree.map(lambda x: jnp.repeat(x, batch_repeat, axis=0), encoded)  # (members)
  inputs = jnp.repeat(inputs, batch_repeat, axis=0)

  def step_recompute(prefix, tokens, t):
    prefix = jax.lax.dynamic_update_slice_in_dim(prefix, tokens[:, None], t, axis=1)
    logits = model.decode(encoded, inputs, prefix)  # causal: position t sees prefix[:t + 1]
    return jax.lax.dynamic_index_in_dim(logits, t, 1, keepdims=False), prefix

  return jnp.full((inputs.shape[0], max_len), PAD_ID, jnp.int32), step_recompute


def _reorder(tree, source_beam):
  """Beam b of example i takes the state of beam source_beam[i, b], for every array in tree
  whose leading axis is examples x beams (cache reordering after a beam step)."""
  batch, k = source_beam.shape
  rows = (source_beam + k * jnp.arange(batch)[:, None]).reshape(-1)

  # One row gather per array. mode='clip' (the rows are in range) keeps XLA from adding a
  # pass over the whole cache that masks out-of-range rows, as take_along_axis's 'fill' does.
  return jax.tree.map(lambda x: x if x.ndim == 0 else jnp.take(x, rows, axis=0, mode='clip'), tree)


def _argmax(x):
  """jnp.argmax over the last axis (first index among ties) as two vectorised reductions,
  several times faster on CPU than XLA's variadic (value, index) reduction."""
  top = jnp.max(x, axis=-1, keepdims=True)
  index = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  return jnp.min(jnp.where(x == top, index, x.shape[-1]), axis=-1)


def _too_short(seqs, t, min_len: int, min_words: int, word_start):
  """[...] bool: EOS not yet allowed, as seqs[..., :t] (the tokens so far; padding, id 0, after
  them) has fewer than min_len tokens or fewer than min_words word-initial tokens (word_start:
  [vocab] bool, SentencePiece pieces that begin with the word marker)."""
  short = jnp.broadcast_to(t < min_len, seqs.shape[:-1])
  if min_words:
    if word_start is None:
      raise ValueError('min_words needs word_start, the [vocab] mask of word-initial tokens.')
    short = short | (jnp.sum(word_start[seqs] & (seqs != PAD_ID), axis=-1) < min_words)
  return short


def _repeated_ngram_tokens(seqs, t, n: int, vocab_size: int):
  """[..., vocab] bool: the tokens that would complete an n-gram already in seqs[..., :t] (the
  token after each earlier occurrence of the last n - 1 tokens), to block as fairseq's
  --no-repeat-ngram-size and Hugging Face's no_repeat_ngram_size do. n = 1: every token so far."""
  m = n - 1
  length = seqs.shape[-1]
  # start i of an earlier n-gram: its last token i + m is already generated ...
  match = jnp.broadcast_to(jnp.arange(length) + m < t, seqs.shape)
  for j in range(m):  # ... and its first n - 1 tokens equal the last n - 1 tokens
    last_j = jax.lax.dynamic_slice_in_dim(seqs, jnp.maximum(t - m + j, 0), 1, axis=-1)
    match = match & (jnp.roll(seqs, -j, axis=-1) == last_j)
  following = jnp.roll(seqs, -m, axis=-1).reshape(-1, length)  # token i + m
  rows = jnp.arange(following.shape[0])[:, None]
  hits = (
    jnp.zeros((following.shape[0], vocab_size), jnp.int32)
    .at[rows, following]
    .add(match.reshape(-1, length).astype(jnp.int32))
  )
  return (hits > 0).reshape(seqs.shape[:-1] + (vocab_size,))


def _restrict(log_probs, t, limits, no_eos, banned=None):
  """Never PAD or BOS; no EOS where no_eos ([...] bool: too short); no token that banned
  ([..., vocab] bool) marks; only EOS at a sequence's budget (limits, which win over the rest).
  Works on logits too (the ranking within a row is the same)."""
  vocab = jnp.arange(log_probs.shape[-1])
  log_probs = jnp.where((vocab == PAD_ID) | (vocab == BOS_ID), NEG_INF, log_probs)
  if banned is not None:
    log_probs = jnp.where(banned, NEG_INF, log_probs)
  at_budget = (t + 1 >= limits)[..., None]
  log_probs = jnp.where((vocab == EOS_ID) & ~at_budget & no_eos[..., None], NEG_INF, log_probs)
  return jnp.where(at_budget & (vocab != EOS_ID), NEG_INF, log_probs)


def _constrained(logits, seqs, t, limits, min_len, min_words, word_start, no_repeat_ngram):
  """_restrict with the constraints on the sequences so far (seqs: [..., max_len])."""
  banned = (
    _repeated_ngram_tokens(seqs, t, no_repeat_ngram, logits.shape[-1]) if no_repeat_ngram else None
  )
  return _restrict(logits, t, limits, _too_short(seqs, t, min_len, min_words, word_start), banned)


def greedy_decode(
  model,
  inputs,
  *,
  max_len: int,
  len_a: float = 1.2,
  len_b: int = 10,
  use_cache: bool = True,
  allow_eos: bool = True,
  min_len: int = 0,
  min_words: int = 0,
  word_start=None,
  no_repeat_ngram: int = 0,
):
  """Argmax decoding: [batch, src_len] -> [batch, max_len] token ids (EOS, then padding).

  allow_eos=False suppresses EOS until the length budget (fixed-length benchmarks). Within the
  budget: min_len: at least this many tokens before EOS; min_words: at least this many words,
  counted as tokens whose word_start ([vocab] bool) is set; no_repeat_ngram=n: no n-gram twice.
  """
  batch = inputs.shape[0]
  limits = max_lengths(inputs, len_a, len_b, max_len)
  min_len = min_len if allow_eos else max_len
  state, step = _stepper(model, inputs, 1, max_len, use_cache)

  def body(carry):
    t, tokens, out, done, state = carry
    logits, state = step(state, tokens, t)
    # argmax of the logits = argmax of the log-probabilities: no softmax needed
    next_tokens = _argmax(
      _constrained(logits, out, t, limits, min_len, min_words, word_start, no_repeat_ngram)
    )
    next_tokens = jnp.where(done, PAD_ID, next_tokens)
    out = out.at[:, t].set(next_tokens)
    return t + 1, next_tokens, out, done | (next_tokens == EOS_ID), state

  def cond(carry):
    t, _, _, done, _ = carry
    return (t < max_len) & ~jnp.all(done)

  init = (
    jnp.array(0),
    jnp.full((batch,), BOS_ID, jnp.int32),
    jnp.zeros((batch, max_len), jnp.int32),
    jnp.zeros((batch,), bool),
    state,
  )
  return jax.lax.while_loop(cond, body, init)[2]


def auto_beam_groups(groups: int = 0) -> int:
  """config.beam_groups -> sub-batches for `beam_search`; 0 (auto): 2 where the whole batch is on
  one CPU device (XLA:CPU then runs the two searches on two cores at once), else 1."""
  if groups:
    return groups
  return 2 if jax.default_backend() == 'cpu' and jax.device_count() == 1 else 1


def beam_search(model, inputs, *, groups: int = 1, **kwargs):
  """Beam search; returns the best finished hypothesis per example [batch, max_len] and its
  length-normalised score [batch] (with n_best=True: the beam_size best, [batch, beam_size,
  max_len] and [batch, beam_size]). Scores are log P(y|x) / length_penalty(|y|, alpha).

  Keyword arguments as `beam_search_loop`. groups > 1 splits the batch into that many
  contiguous sub-batches, each searched by its own loop: the loops share no data, so XLA:CPU
  runs them on different cores at the same time (a beam step's many small ops leave a core idle
  otherwise; docs/speed.md). Each example is searched as in one loop: the same outputs, with
  scores equal up to float32 rounding (a sub-batch's matmuls may sum in another order, as any
  change of batch size can make them).
  """
  batch = inputs.shape[0]
  groups = min(groups, batch)
  if groups <= 1:
    return beam_search_loop(model, inputs, **kwargs)
  bounds = [batch * i // groups for i in range(groups + 1)]
  parts = [beam_search_loop(model, inputs[a:b], **kwargs) for a, b in zip(bounds, bounds[1:])]
  return tuple(jnp.concatenate(arrays) for arrays in zip(*parts))


def beam_search_loop(
  model,
  inputs,
  *,
  beam_size: int = 4,
  alpha: float = 0.6,
  max_len: int,
  len_a: float = 1.2,
  len_b: int = 10,
  use_cache: bool = True,
  allow_eos: bool = True,
  min_len: int = 0,
  min_words: int = 0,
  word_start=None,
  no_repeat_ngram: int = 0,
  n_best: bool = False,
):
  """Beam search over the whole batch in one loop (see `beam_search`). allow_eos and the
  constraints (min_len, min_words, no_repeat_ngram) as in `greedy_decode`. n_best: return the
  beam_size best finished hypotheses [batch, beam_size, max_len] and their scores [batch,
  beam_size], best first (a slot no hypothesis reached scores NEG_INF), not only the best."""
  batch, k = inputs.shape[0], beam_size
  min_len = min_len if allow_eos else max_len
  limits = jnp.repeat(max_lengths(inputs, len_a, len_b, max_len)[:, None], k, axis=1)
  state, step = _stepper(model, inputs, k, max_len, use_cache)

  def body(carry):
    t, seqs, alive_lp, fin_seqs, fin_scores, state = carry
    last = jnp.where(t == 0, BOS_ID, seqs[:, :, jnp.maximum(t - 1, 0)]).reshape(-1)
    logits, state = step(state, last, t)
    logits = logits.reshape(batch, k, -1)
    log_z = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    # The 2k best of all k x vocab candidates (2k: k may end in EOS) are among each beam's 2k
    # best tokens, and a beam's ranking of tokens is that of its logits: take the per-beam top
    # 2k of the logits first, then the top 2k of those k x 2k candidates. Same result (and tie
    # order) as one top_k over all candidates, without building the [batch, k * vocab] array.
    per_beam = min(2 * k, logits.shape[-1])
    restricted = _constrained(
      logits, seqs, t, limits, min_len, min_words, word_start, no_repeat_ngram
    )
    top_k = techniques(model.platform).top_k
    beam_top, beam_token = top_k(restricted, per_beam)  # [batch, k, per_beam]
    beam_lp = jnp.where(beam_top <= NEG_INF, NEG_INF, beam_top - log_z)
    candidates = (alive_lp[:, :, None] + beam_lp).reshape(batch, k * per_beam)
    top_lp, top_idx = jax.lax.top_k(candidates, 2 * k)
    beam = top_idx // per_beam
    token = jnp.take_along_axis(beam_token.reshape(batch, -1), top_idx, axis=1).astype(jnp.int32)
    top_seqs = jnp.take_along_axis(seqs, beam[:, :, None], axis=1).at[:, :, t].set(token)
    is_eos = token == EOS_ID
    # Finished: merge new EOS candidates into the k best finished hypotheses.
    new_scores = jnp.where(is_eos, top_lp / length_penalty(t + 1, alpha), NEG_INF)
    all_scores = jnp.concatenate([fin_scores, new_scores], axis=1)
    all_seqs = jnp.concatenate([fin_seqs, top_seqs], axis=1)
    fin_scores, keep = jax.lax.top_k(all_scores, k)
    fin_seqs = jnp.take_along_axis(all_seqs, keep[:, :, None], axis=1)
    # Alive: the k best candidates that did not end.
    alive_scores = jnp.where(is_eos, NEG_INF, top_lp)
    alive_lp, keep = jax.lax.top_k(alive_scores, k)
    seqs = jnp.take_along_axis(top_seqs, keep[:, :, None], axis=1)
    source_beam = jnp.take_along_axis(beam, keep, axis=1)
    return t + 1, seqs, alive_lp, fin_seqs, fin_scores, _reorder(state, source_beam)

  def cond(carry):
    t, _, alive_lp, _, fin_scores, _ = carry
    # Stop when no alive beam can still beat the worst kept finished hypothesis, even with
    # the most favourable length penalty (the longest allowed length).
    best_alive = alive_lp[:, 0] / length_penalty(max_len, alpha)
    done = jnp.all(fin_scores[:, -1] > best_alive) | jnp.all(alive_lp[:, 0] <= NEG_INF / 2)
    return (t < max_len) & ~done

  init_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1)), (batch, 1))
  init = (
    jnp.array(0),
    jnp.zeros((batch, k, max_len), jnp.int32),
    init_lp,
    jnp.zeros((batch, k, max_len), jnp.int32),
    jnp.full((batch, k), NEG_INF),
    state,
  )
  _, _, _, fin_seqs, fin_scores, _ = jax.lax.while_loop(cond, body, init)
  if n_best:
    return fin_seqs, fin_scores
  return fin_seqs[:, 0], fin_scores[:, 0]
