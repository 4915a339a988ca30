"""A run's config: its one-line errors, the checks shared by training and decoding, and its
config.json, written once the run is prepared and read back exactly as written."""

import functools
import json

import jax
import ml_collections
from etils import epath

from model.architectures import ARCHITECTURES

MBR_UTILITIES = ('', 'bleu', 'chrf', 'rouge')
# what decoding reads, beside the model's fields: eval.py's flags override these
DECODING_FIELDS = (
  'beam_size',
  'average_last',
  'length_penalty',
  'max_decode_len_a',
  'max_decode_len_b',
  'beam_groups',
  'min_decode_len',
  'min_decode_words',
  'no_repeat_ngram_size',
  'mbr_utility',
  'mbr_temperature',
)
# what restoring a run and reading its evaluation data read
RUN_FIELDS = (
  'architecture',
  'task',
  'dataset',
  'data_dir',
  'eval_split',
  'eval_files',
  'file_format',
  'source_key',
  'target_key',
  'source_lang',
  'target_lang',
  'lowercase',
  'truncate_inputs',
  'vocab_model_type',
  'max_eval_len',
  'eval_batch_size',
  'mesh',
  'sharding_rules',
  'keep_checkpoints',
  'ema_decay',
  'expected_result',
)


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the fix."""


def one_line(error: Exception) -> str:
  """An exception as one short line: its type and the first line of its message."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return f'{type(error).__name__}: {lines[0][:200]}' if lines else type(error).__name__


def check_decoding(config):
  """The decoding fields (eval.py's flags override them; it calls this after they have)."""
  check = functools.partial(require, config)
  check(is_int(config.beam_size, 1), 'beam_size', 'must be an integer >= 1 (1: greedy).')
  check(
    is_int(config.average_last, 1),
    'average_last',
    'must be an integer >= 1 (the number of last checkpoints averaged).',
  )
  check(config.length_penalty >= 0, 'length_penalty', 'must be >= 0 (0: no length penalty).')
  check(
    config.max_decode_len_a >= 0,
    'max_decode_len_a',
    'must be >= 0 (outputs get at most a x source length + b tokens).',
  )
  check(
    is_int(config.max_decode_len_b, 0)
    and (config.max_decode_len_a > 0 or config.max_decode_len_b > 0),
    'max_decode_len_b',
    'must be an integer >= 0, and above 0 where max_decode_len_a is 0.',
  )
  check(
    is_int(config.beam_groups, 0),
    'beam_groups',
    'must be an integer >= 0 (0: auto, 2 on one CPU device, else 1).',
  )
  for field in ('min_decode_len', 'min_decode_words', 'no_repeat_ngram_size'):
    check(is_int(config.get(field), 0), field, 'must be an integer >= 0 (0: off).')
  check(
    config.mbr_utility in MBR_UTILITIES,
    'mbr_utility',
    f"is unknown; use one of {MBR_UTILITIES} ('': the beam's best).",
  )
  check(
    not config.mbr_utility or config.beam_size >= 2,
    'mbr_utility',
    f"chooses among the beam's hypotheses: it needs config.beam_size >= 2, not "
    f'{config.beam_size} (eval.py: --beam_size=20, or --mbr=none).',
  )
  check(config.mbr_temperature >= 0, 'mbr_temperature', 'must be >= 0 (0: equal weights).')


def require(config, ok, field, why):
  """Raise ConfigError 'config.<field>=<value> <why>' unless ok."""
  if not ok:
    raise ConfigError(f'config.{field}={config.get(field)!r} {why}')


def is_int(value, minimum: int) -> bool:
  """An int (not a bool) >= minimum."""
  return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def required_fields(config) -> tuple:
  """The fields a saved run must hold to be restored and decoded: RUN_FIELDS, DECODING_FIELDS
  and the fields of its architecture's typed model config."""
  architecture = ARCHITECTURES.get(config.get('architecture'))
  return RUN_FIELDS + DECODING_FIELDS + (architecture[0].config_fields() if architecture else ())


def read_saved_config(workdir: str):
  """The config of the run in `workdir` (its config.json) as it was saved, or None where there
  is none. A config.json that lacks a field this code reads (one written by another layout of
  the config) raises ConfigError naming the missing fields."""
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    return None
  try:
    saved = json.loads(path.read_text())
  except ValueError as e:
    raise ConfigError(
      f'{path} is not valid JSON ({one_line(e)}); restore it from a copy.'
    ) from None
  missing = sorted(set(required_fields(saved)) - set(saved))
  if missing:
    raise ConfigError(
      f'{path} lacks config.{", config.".join(missing)}: it was written by another layout of the '
      f'config; add the fields with the values the run was trained with.'
    )
  return ml_collections.ConfigDict(saved)


def tree_signature(tree) -> list:
  """Sorted (path, shape, dtype) of a tree's arrays: the same for a state and for the metadata
  of its checkpoint."""

  def name(key):
    for attr in ('key', 'idx', 'name'):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return sorted(
    ('/'.join(name(k) for k in path), tuple(x.shape), str(x.dtype)) for path, x in leaves
  )


def first_difference(signature, other) -> str:
  """The first array path where two signatures differ, and how, for an error message."""
  if other is None:
    return "it does not build with the run's other fields"
  ours, theirs = dict((p, s) for p, *s in signature), dict((p, s) for p, *s in other)
  for path in sorted(set(ours) | set(theirs)):
    if ours.get(path) != theirs.get(path):
      what = 'added' if path not in ours else 'removed' if path not in theirs else 'reshaped'
      return f'{path} {what}'
  return 'the same arrays in another order'


def save_config(config, workdir: str):
  """Write config.json (process 0), write-then-rename: nobody sees half a file."""
  if jax.process_index() == 0:
    path = epath.Path(workdir) / 'config.json'
    partial = path.parent / 'config.json.partial'
    partial.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    partial.replace(path)
