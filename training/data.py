"""The training iterator, the run's tokenizer and the tokenized validation data."""

import functools
import io
import os

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from core.config import ConfigError
from input_pipeline import batching, datasets
from input_pipeline import tokenizer as tokenizer_lib

SAMPLES_DIR = 'subword_samples'


def saved_samples(workdir: str, resample):
  """Wraps `resample(epoch) -> (sources, targets)` so that each epoch's sampled segmentations
  are drawn once, by process 0, and saved in <workdir>/subword_samples/: every process, and a
  run resumed in that epoch or the next, reads the same tokens (SentencePiece's sampling cannot
  be seeded across processes). Older epochs' files are deleted (~4 bytes per token)."""
  directory = epath.Path(workdir) / SAMPLES_DIR

  def read_or_draw(epoch):
    path = directory / f'epoch_{epoch}.npz'
    if jax.process_index() == 0 and not path.exists():
      arrays = {}
      for side, seqs in zip(('sources', 'targets'), resample(epoch)):
        arrays[f'{side}_tokens'] = np.concatenate(seqs).astype(np.int32)
        arrays[f'{side}_lengths'] = np.array([len(s) for s in seqs], np.int32)
      buffer = io.BytesIO()
      np.savez(buffer, **arrays)
      directory.mkdir(parents=True, exist_ok=True)
      partial = directory / (path.name + '.partial')  # write-then-rename, as checkpoints
      partial.write_bytes(buffer.getvalue())
      partial.replace(path)
      for old in directory.glob('epoch_*.npz'):
        if int(old.stem.split('_')[1]) < epoch - 1:
          old.unlink()
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'subword samples of epoch {epoch}')
    with np.load(io.BytesIO(path.read_bytes())) as saved:
      return tuple(
        np.split(saved[f'{side}_tokens'], np.cumsum(saved[f'{side}_lengths'])[:-1])
        for side in ('sources', 'targets')
      )

  return read_or_draw


def load_data(config, workdir, log):
  """Training iterator, the run's tokenizer and tokenized validation data. A new tokenizer is
  saved in the workdir only once some training pair fits (process 0; the others then read it)."""
  train_examples, skipped = datasets.load_examples(config, config.train_split)
  gap_pairs = datasets.gap_sentence_examples(train_examples) if config.gap_sentences else []
  texts = (
    [e['source'] for e in train_examples + gap_pairs],
    [e['target'] for e in train_examples + gap_pairs],
  )

  def iterator(tok):
    """The training iterator over the pairs tokenized by `tok`."""
    if tok.vocab_size != config.vocab_size:
      raise ConfigError(
        f'config.vocab_size={config.vocab_size} but the tokenizer in {workdir} has '
        f'{tok.vocab_size} pieces; use a new --workdir'
        + ('.' if (epath.Path(workdir) / 'config.json').exists() else ', or delete that file.')
      )

    def tokenize(encode):
      sources, targets = encode(texts[0]), encode(texts[1])
      if config.truncate_inputs:
        sources = [batching.truncate(s, config.max_train_len) for s in sources]
      return sources, targets

    def resample(epoch):
      del epoch  # every call draws anew; saved_samples keeps each epoch's draw
      return tokenize(
        functools.partial(
          tok.sample_encode,
          alpha=config.subword_sampling_alpha,
          nbest_size=config.subword_sampling_nbest,
        )
      )

    try:
      return batching.TrainIterator(
        *tokenize(tok.encode),
        batching=config.batching,
        batch_size=config.batch_size,
        max_len=config.max_train_len,
        max_tokens=config.max_tokens,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        row_multiple=jax.local_device_count(),
        max_target_len=config.max_target_len or None,
        pack_window=config.pack_window,
        resample=saved_samples(workdir, resample) if config.subword_sampling_alpha > 0 else None,
      )
    except batching.NoPairFits as e:
      raise datasets.DataError(str(e)) from None

  if jax.process_index() == 0:
    tok = tokenizer_lib.load_or_train(config, workdir, train_examples)
    train_iter = iterator(tok)
    tok.save()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('tokenizer')
  if jax.process_index() != 0:
    tok = tokenizer_lib.Tokenizer(os.path.join(workdir, tokenizer_lib.FILENAME))
    train_iter = iterator(tok)
  limits = f'max_train_len={config.max_train_len}' + (
    f', max_target_len={config.max_target_len}' if config.max_target_len else ''
  )
  gap = f' + {len(gap_pairs)} gap-sentence pairs' if gap_pairs else ''
  log(
    f'data: {config.dataset} {config.train_split}: {len(train_examples)} pairs{gap} '
    f'({skipped} empty skipped, {train_iter.dropped} longer than {limits} dropped); '
    f'vocabulary {tok.vocab_size} ({tok.path})'
  )
  eval_examples, _ = datasets.load_examples(config, config.eval_split)
  eval_data = (
    tok.encode([e['source'] for e in eval_examples]),
    tok.encode([e['target'] for e in eval_examples]),
    [e['target'] for e in eval_examples],
  )
  return train_iter, tok, eval_data
