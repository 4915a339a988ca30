"""One jit-compiled decoding factory for train-time validation and eval.py, and decoding
whole lists of sources (greedy, beam search, n-best with minimum Bayes risk)."""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from core.parallel import process_rows, to_host
from evaluation.mbr import mbr_select
from input_pipeline import batching
from model import decoding


def decoding_options(config, tok):
  """The keyword arguments of decoding.greedy_decode / beam_search that the config sets: the
  output length budget and the constraints on the output."""
  options = dict(
    len_a=config.max_decode_len_a,
    len_b=config.max_decode_len_b,
    min_len=config.min_decode_len,
    min_words=config.min_decode_words,
    no_repeat_ngram=config.no_repeat_ngram_size,
  )
  if options['min_words']:
    options['word_start'] = jnp.asarray(tok.word_starts())
  return options


def decode_length(config, inputs_width: int) -> int:
  return min(config.max_len, int(config.max_decode_len_a * inputs_width + config.max_decode_len_b))


def merge(graphdef, params, rest):
  """The model of nnx.split parts, or for lists of parts the `decoding.Ensemble` of them."""
  if isinstance(graphdef, list):
    return decoding.Ensemble([nnx.merge(*parts) for parts in zip(graphdef, params, rest)])
  return nnx.merge(graphdef, params, rest)


def make_decode_fn(
  graphdef, rest, config, tok, beam_size: int, alpha: float, use_cache=True, n_best=False
):
  """jit-compiled batch decoder: (params, inputs, max_len) -> token ids [batch, max_len]
  (n_best: the beam's finished hypotheses and their scores, see `decoding.beam_search`);
  graphdef, params and rest may be lists (an ensemble's members, see `merge`)."""
  options = decoding_options(config, tok)

  @functools.partial(jax.jit, static_argnames=('max_len',))
  def decode(params, inputs, max_len):
    model = merge(graphdef, params, rest)
    kwargs = dict(max_len=max_len, use_cache=use_cache, **options)
    if beam_size == 1:
      return decoding.greedy_decode(model, inputs, **kwargs)
    out = decoding.beam_search(
      model,
      inputs,
      beam_size=beam_size,
      alpha=alpha,
      groups=decoding.auto_beam_groups(config.beam_groups),
      n_best=n_best,
      **kwargs,
    )
    return out if n_best else out[0]

  return decode


def decode_all(sources, decode_fn, params, config, batch_size, sharding=None):
  """Decode every tokenized source (in order) -> list of decode_fn's rows (token id arrays,
  or for an n-best decode_fn (ids, scores) pairs)."""
  outputs = [None] * len(sources)
  for batch in batching.eval_batches(sources, batch_size, config.max_eval_len):
    inputs = batch['inputs']
    if sharding is not None:
      inputs = jax.make_array_from_process_local_data(sharding, process_rows(inputs))
    out = to_host(
      decode_fn(params, inputs, max_len=decode_length(config, batch['inputs'].shape[1]))
    )
    for row, index in enumerate(batch['index']):
      if index >= 0:
        outputs[index] = jax.tree.map(lambda x, row=row: x[row], out)
  return outputs


def decode_texts(
  sources, config, tok, graphdef, params, rest, beam_size, alpha, batch_size, sharding=None
):
  """Decode tokenized sources -> output strings: each beam search's best, or with
  config.mbr_utility set, the minimum Bayes risk choice among its n-best (`mbr_select`)."""
  utility = config.get('mbr_utility', '')
  decode_fn = make_decode_fn(graphdef, rest, config, tok, beam_size, alpha, n_best=bool(utility))
  outputs = decode_all(sources, decode_fn, params, config, batch_size, sharding)
  if not utility:
    return [tok.decode(ids) for ids in outputs]
  texts = []
  for ids, scores in outputs:
    finished = scores > decoding.NEG_INF / 2  # slots no hypothesis reached are left out
    finished[0] = True
    texts.append(
      mbr_select(
        [tok.decode(row) for row in ids[finished]],
        scores[finished],
        utility,
        config.mbr_temperature,
      )
    )
  return texts
