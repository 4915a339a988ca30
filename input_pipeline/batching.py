"""Training batches (packed rows or token-budget length buckets) and evaluation batches.

Every training batch has the same keys, so train_step has one code path:
  inputs, targets                        [rows, length] int32 token ids (0 = pad)
  inputs_position, targets_position      position of each token within its example
  inputs_segmentation, targets_segmentation  example number within the row (1, 2, ...; 0 = pad)
Bucketed batches hold one example per row (segmentation 1); packed rows hold several.

The iterator's state is a small JSON-able dict (epoch, next example, pending buckets) saved with
every checkpoint: a resumed run sees exactly the batches an uninterrupted run would have seen.
"""

import numpy as np

BATCHINGS = ('packed', 'bucketed')
KEYS = (
  'inputs',
  'targets',
  'inputs_position',
  'targets_position',
  'inputs_segmentation',
  'targets_segmentation',
)


def bucket_lengths(max_len: int, step: int = 8):
  """Row lengths of the length buckets: 8, 16, ..., then 1.5x growth up to max_len."""
  lengths, n = [], step
  while n < max_len:
    lengths.append(n)
    n = n + step if n < 32 else int(n * 1.5) // step * step
  return lengths + [max_len]


class NoPairFits(ValueError):
  """No training pair is within the row lengths: nothing to train on."""


class TrainIterator:
  """Infinite, shuffled (per epoch), deterministic and resumable training batches.

  sources/targets: lists of int arrays (token ids ending with EOS). Pairs with a source longer
  than `max_len` or a target longer than `max_target_len` (default: max_len) are dropped
  (counted in `dropped`). `batch_size` counts rows of the global batch (packed); `max_tokens`
  the global source-token budget (bucketed). Each process gets rows
  [process_index * rows / process_count, ...) of every global batch.

  Packed rows are filled first-fit from a window of the next `pack_window` examples of the
  epoch's order: each row takes, oldest first, every windowed example that still fits on both
  sides, refilling the window, until a pass adds nothing; an example waits at most until the
  next row after it is the oldest. pack_window=1 (the default, as config.pack_window) is plain
  next-fit: the row closes at the first example that does not fit, which starts the next row.
  On Multi30k's 64-token rows a window of 64 fills 94% of the target slots, next-fit 85%.

  With max_target_len unset, source and target rows share one length (translation). Set, target
  rows are max_target_len long (packed) or the target bucket that fits the batch's longest
  target (bucketed, where rows are then bucketed by source length alone): summarization's short
  targets then do not pay for the long sources' row length in the decoder.

  `resample(epoch) -> (sources, targets)`, if given, re-tokenizes every pair (aligned with
  `sources`/`targets`) for each epoch: subword regularization. A sampled pair that breaks the
  length limits keeps its given tokens; pairs are kept or dropped by the given tokens. The new
  tokens apply from the first batch that starts in the epoch on, to every example, including
  those still waiting from the previous epoch (bucketed: they move to their new length
  bucket); a batch is laid out with the tokens it started with. A resumed run calls
  `resample` for its epoch again: if that returns the same tokens (train.py reads them back from
  the workdir), it sees the same batches as an uninterrupted run.
  """

  def __init__(
    self,
    sources,
    targets,
    *,
    batching='packed',
    batch_size=64,
    max_len=64,
    max_tokens=4096,
    seed=0,
    process_index=0,
    process_count=1,
    row_multiple=1,
    max_target_len=None,
    pack_window=1,
    resample=None,
  ):
    if batching not in BATCHINGS:
      raise ValueError(f'config.batching={batching!r} is unknown; use one of {BATCHINGS}.')
    self.separate_target_len = bool(max_target_len)
    self.max_target_len = max_target_len or max_len
    keep = [
      i
      for i in range(len(sources))
      if 0 < len(sources[i]) <= max_len and 0 < len(targets[i]) <= self.max_target_len
    ]
    if not keep:
      shortest = min(max(len(s), len(t)) for s, t in zip(sources, targets))
      raise NoPairFits(
        f'no training pair fits config.max_train_len={max_len} (targets: '
        f'{self.max_target_len}): the shortest has {shortest} tokens on its longer side; raise '
        f'config.max_train_len and config.max_len to {shortest} or more, or set '
        f'config.truncate_inputs=True for long sources.'
      )
    self.dropped = len(sources) - len(keep)
    self.row_limits = np.array([max_len, self.max_target_len])
    self._keep, self._resample, self._tokens_epoch = keep, resample, None
    self._given = (sources, targets)
    self._set_tokens(sources, targets)
    self.batching, self.max_len, self.seed = batching, max_len, seed
    self.process_index, self.process_count = process_index, process_count
    multiple = row_multiple * process_count  # rows must split evenly over devices and hosts
    if batching == 'packed':
      if pack_window < 1:
        raise ValueError(f'config.pack_window={pack_window} must be at least 1 (1: next-fit).')
      self.pack_window = pack_window
      if batch_size % multiple:
        raise ValueError(
          f'config.batch_size={batch_size} must be divisible by {multiple} (devices x processes).'
        )
      self.rows = batch_size
    else:
      self.buckets = bucket_lengths(max_len)
      self.bucket_rows = [
        max(multiple, max_tokens // length // multiple * multiple) for length in self.buckets
      ]
    # pending: per length bucket (bucketed) or the packing window (packed), drawn examples not
    # yet in a batch, in draw order.
    self.state = {
      'epoch': 0,
      'index': 0,
      'pending': [[] for _ in range(len(self.buckets) if batching == 'bucketed' else 1)],
    }
    self.real_tokens = self.total_tokens = 0
    self._perm_epoch, self._perm = None, None

  # -- state

  def get_state(self) -> dict:
    return {
      'epoch': self.state['epoch'],
      'index': self.state['index'],
      'pending': [list(map(int, p)) for p in self.state['pending']],
    }

  def set_state(self, state: dict):
    pending = [list(map(int, p)) for p in state['pending']]
    self.state = {'epoch': int(state['epoch']), 'index': int(state['index']), 'pending': pending}

  @property
  def padding_fraction(self) -> float:
    """Share of padding among all token slots produced so far (source and target)."""
    return 1.0 - self.real_tokens / max(self.total_tokens, 1)

  # -- tokens

  def _set_tokens(self, sources, targets):
    """The kept pairs' tokens: `sources`/`targets` where within the limits, else the given."""
    self.sources, self.targets = [], []
    for i in self._keep:
      source, target = sources[i], targets[i]
      if not (len(source) <= self.row_limits[0] and len(target) <= self.row_limits[1]):
        source, target = self._given[0][i], self._given[1][i]
      self.sources.append(np.asarray(source, np.int32))
      self.targets.append(np.asarray(target, np.int32))
    self.lengths = np.array([[len(s), len(t)] for s, t in zip(self.sources, self.targets)])
    self._pairs = [tuple(map(int, pair)) for pair in self.lengths]  # fast to scan

  def _sync_tokens(self):
    """Re-tokenize (resample) for the current epoch if not done yet."""
    epoch = self.state['epoch']
    if self._resample is None or self._tokens_epoch == epoch:
      return
    self._set_tokens(*self._resample(epoch))
    self._tokens_epoch = epoch
    if self.batching == 'bucketed':  # waiting examples move to their new length bucket
      pending = [[] for _ in self.buckets]
      for example in (e for bucket in self.state['pending'] for e in bucket):
        pending[self._bucket_of(example)].append(example)
      self.state['pending'] = pending

  # -- iteration

  def _permutation(self, epoch):
    if self._perm_epoch != epoch:
      self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.sources))
      self._perm_epoch = epoch
    return self._perm

  def _next_example(self):
    state = self.state
    if state['index'] == len(self.sources):
      state['epoch'] += 1
      state['index'] = 0
    example = int(self._permutation(state['epoch'])[state['index']])
    state['index'] += 1
    return example

  def __iter__(self):
    return self

  def __next__(self):
    self._sync_tokens()
    if self.batching == 'packed':
      rows, lengths = self._packed_rows(), self.row_limits
    else:
      rows, length = self._bucket_rows()
      lengths = (length, length)
      if self.separate_target_len:
        longest = max(self.lengths[row[0], 1] for row in rows)
        lengths = (length, next(b for b in bucket_lengths(self.max_target_len) if longest <= b))
    batch = _pack(rows, self.sources, self.targets, *lengths)
    self.real_tokens += int((batch['inputs'] != 0).sum() + (batch['targets'] != 0).sum())
    self.total_tokens += batch['inputs'].size + batch['targets'].size
    share = len(rows) // self.process_count
    lo = self.process_index * share
    return {k: v[lo : lo + share] for k, v in batch.items()}

  def _packed_rows(self):
    window, pairs = self.state['pending'][0], self._pairs
    rows = []
    for _ in range(self.rows):
      row, (free_source, free_target) = [], map(int, self.row_limits)
      while True:
        while len(window) < self.pack_window:
          window.append(self._next_example())
        left = []
        for example in window:
          source, target = pairs[example]
          if source <= free_source and target <= free_target:
            row.append(example)
            free_source, free_target = free_source - source, free_target - target
          else:
            left.append(example)
        if len(left) == len(window):
          break
        window[:] = left
      rows.append(row)
    return rows

  def _bucket_of(self, example):
    longest = self.lengths[example, 0] if self.separate_target_len else self.lengths[example].max()
    return next(i for i, b in enumerate(self.buckets) if longest <= b)

  def _bucket_rows(self):
    pending = self.state['pending']
    while True:
      example = self._next_example()
      bucket = self._bucket_of(example)
      pending[bucket].append(example)
      rows = self.bucket_rows[bucket]
      if len(pending[bucket]) >= rows:  # more only after a resample moved examples here
        batch, pending[bucket] = pending[bucket][:rows], pending[bucket][rows:]
        return [[e] for e in batch], self.buckets[bucket]


def _pack(rows, sources, targets, source_length, target_length):
  """Lay out rows of examples into the batch arrays (see module docstring)."""
  batch = {}
  for side, length in (('inputs', source_length), ('targets', target_length)):
    for key in (side, f'{side}_position', f'{side}_segmentation'):
      batch[key] = np.zeros((len(rows), length), np.int32)
  for r, row in enumerate(rows):
    for side, seqs in (('inputs', sources), ('targets', targets)):
      offset = 0
      for segment, example in enumerate(row, 1):
        seq = seqs[example]
        end = offset + len(seq)
        batch[side][r, offset:end] = seq
        batch[f'{side}_position'][r, offset:end] = np.arange(len(seq))
        batch[f'{side}_segmentation'][r, offset:end] = segment
        offset = end
  return batch


def eval_batches(sources, batch_size: int, max_len: int, targets=None, length_step: int = 16):
  """Every example exactly once, in order; the last batch padded with empty rows.

  Yields dicts with 'inputs' [batch_size, L] (L: the batch's longest source rounded up to a
  multiple of `length_step`, at most max_len; longer sources are cut to max_len keeping EOS),
  'targets' likewise when given, 'index' (example numbers, -1 for padding rows) and
  'weights' (1 for real rows).
  """
  n = len(sources)
  for start in range(0, n, batch_size):
    index = np.arange(start, start + batch_size)
    index[index >= n] = -1
    batch = {'index': index, 'weights': (index >= 0).astype(np.float32)}
    for key, seqs in (('inputs', sources), ('targets', targets)):
      if seqs is None:
        continue
      chunk = [truncate(seqs[i], max_len) for i in index if i >= 0]
      longest = max(len(s) for s in chunk)
      width = min(max_len, -(-longest // length_step) * length_step)
      array = np.zeros((batch_size, width), np.int32)
      for r, seq in enumerate(chunk):
        array[r, : len(seq)] = seq
      batch[key] = array
    yield batch


def truncate(seq, max_len):
  """Cut a token sequence to max_len, keeping its final EOS."""
  seq = np.asarray(seq, np.int32)
  if len(seq) <= max_len:
    return seq
  return np.concatenate([seq[: max_len - 1], seq[-1:]])
