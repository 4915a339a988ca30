"""Config checks and the saved config of a run, before any data is read or anything compiles."""

import functools
import json

import jax
import ml_collections
from etils import epath

from configs import default
from input_pipeline import batching
from input_pipeline import tokenizer as tokenizer_lib
from model.architectures import model_config
from training import parallel
from training.optimizer import create_optimizer
from training.steps import create_model, init_state

SCHEDULES = ('rsqrt', 'cosine', 'constant')
OPTIMIZERS = ('adam', 'adamw')
TASKS = ('translation', 'summarization')
MBR_UTILITIES = ('', 'bleu', 'chrf', 'rouge')
# Fields that fix the text a run reads and writes: its tokenizer and data stay the run's.
TEXT_FIELDS = ('lowercase', 'vocab_model_type', 'source_lang', 'target_lang')
# Config fields added after runs had been trained -> the values that reproduce those runs.
FIELDS_ADDED_LATER = {
  'matmul_dtype': 'float32',
  'qk_norm': 0.0,
  'average_last': 1,
  'expected_result': '',
  'grad_accum_steps': 1,
  'mesh': 'data:-1,fsdp:1,tensor:1',
  'sharding_rules': 'embed:fsdp,heads:tensor,mlp:tensor,vocab:tensor',
}


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the fix."""


def one_line(error: Exception) -> str:
  """An exception as one short line: its type and the first line of its message."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return f'{type(error).__name__}: {lines[0][:200]}' if lines else type(error).__name__


def validate_training_config(config):
  """Check every training field before any data is read or anything compiles."""
  try:
    model_config(config)  # the model fields, checked where they are defined
  except ValueError as e:
    raise ConfigError(str(e)) from None

  require = functools.partial(_require, config)
  for field in (
    'num_train_steps',
    'batch_size',
    'eval_batch_size',
    'max_tokens',
    'checkpoint_every_steps',
    'keep_checkpoints',
    'log_every_steps',
    'eval_every_steps',
    'max_train_len',
    'max_eval_len',
    'pack_window',
    'grad_accum_steps',
  ):
    require(_is_int(config.get(field), 1), field, 'must be a positive integer.')
  require(
    config.grad_accum_steps == 1 or config.batching == 'packed',
    'grad_accum_steps',
    "> 1 needs config.batching='packed' (micro-batches of one shape).",
  )
  require(config.task in TASKS, 'task', f'is unknown; use one of {TASKS}.')
  require(_is_int(config.seed, 0), 'seed', 'must be an integer >= 0.')
  require(
    _is_int(config.num_eval_bleu_batches, 0),
    'num_eval_bleu_batches',
    'must be an integer >= 0 (0: no BLEU during training).',
  )
  require(config.warmup_steps >= 0, 'warmup_steps', 'must be >= 0.')
  require(config.learning_rate > 0, 'learning_rate', 'must be positive.')
  require(0 <= config.label_smoothing < 1, 'label_smoothing', 'must be in [0, 1).')
  require(config.rdrop_alpha >= 0, 'rdrop_alpha', 'must be >= 0 (0: off).')
  require(0 <= config.ema_decay < 1, 'ema_decay', 'must be in [0, 1) (0: off; e.g. 0.999).')
  require(
    not config.rdrop_alpha
    or config.dropout_rate > 0
    or config.attention_dropout_rate > 0
    or config.source_word_dropout > 0,
    'rdrop_alpha',
    'needs dropout (config.dropout_rate, attention_dropout_rate or source_word_dropout > 0): '
    'without it the two passes are identical; set rdrop_alpha=0.',
  )
  require(
    isinstance(config.loss_chunk_size, int) and config.loss_chunk_size >= 0,
    'loss_chunk_size',
    'must be an integer >= 0 (0: plain logits path).',
  )
  require(
    config.time_budget_minutes >= 0,
    'time_budget_minutes',
    'must be >= 0 (0: no budget, train config.num_train_steps).',
  )
  require(config.grad_clip_norm >= 0, 'grad_clip_norm', 'must be >= 0 (0 disables).')
  require(config.schedule in SCHEDULES, 'schedule', f'is unknown; use one of {SCHEDULES}.')
  require(
    config.schedule != 'cosine' or max(config.warmup_steps, 1) < config.num_train_steps,
    'warmup_steps',
    f'must be below config.num_train_steps={config.num_train_steps} for the '
    'cosine schedule (it decays over the steps after warmup); lower it or train longer.',
  )
  require(config.optimizer in OPTIMIZERS, 'optimizer', f'is unknown; use one of {OPTIMIZERS}.')
  require(
    config.weight_decay >= 0 and (config.weight_decay == 0 or config.optimizer == 'adamw'),
    'weight_decay',
    "must be >= 0, and needs config.optimizer='adamw' (adam has none).",
  )
  require(
    config.batching in batching.BATCHINGS,
    'batching',
    f'is unknown; use one of {batching.BATCHINGS}.',
  )
  require(
    config.max_train_len <= config.max_len,
    'max_train_len',
    f'must be <= config.max_len={config.max_len}.',
  )
  target_len = config.max_target_len
  require(
    isinstance(target_len, int) and 0 <= target_len <= config.max_len,
    'max_target_len',
    f'must be an integer in [0, config.max_len={config.max_len}] (0: max_train_len).',
  )
  require(
    config.max_eval_len <= config.max_len,
    'max_eval_len',
    f'must be <= config.max_len={config.max_len}.',
  )
  require(
    config.vocab_model_type in tokenizer_lib.MODEL_TYPES,
    'vocab_model_type',
    f'is unknown; use one of {tokenizer_lib.MODEL_TYPES}.',
  )
  require(config.vocab_size > 4, 'vocab_size', 'must exceed the 4 special tokens.')
  alpha = config.subword_sampling_alpha
  require(
    alpha >= 0 and (alpha < 1 or config.vocab_model_type == 'unigram'),
    'subword_sampling_alpha',
    'must be >= 0 (0: off), and below 1 for a BPE vocabulary '
    '(there it is the merge-dropout probability).',
  )
  nbest = config.subword_sampling_nbest
  require(
    isinstance(nbest, int) and (nbest == -1 or nbest > 1),
    'subword_sampling_nbest',
    'must be -1 (sample from all segmentations) or an integer > 1.',
  )
  try:
    data, fsdp, _ = parallel.parse_mesh(config.mesh, jax.device_count())
    parallel.parse_rules(config.sharding_rules)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  for field in ('batch_size', 'eval_batch_size'):
    require(
      config[field] % (data * fsdp) == 0,
      field,
      f'must be divisible by the {data * fsdp} devices of the mesh axes data and fsdp.',
    )
  check_decoding(config)


def check_decoding(config):
  """The decoding fields (eval.py's flags override them; it calls this after they have)."""
  require = functools.partial(_require, config)
  require(_is_int(config.beam_size, 1), 'beam_size', 'must be an integer >= 1 (1: greedy).')
  require(
    _is_int(config.average_last, 1),
    'average_last',
    'must be an integer >= 1 (the number of last checkpoints averaged).',
  )
  require(config.length_penalty >= 0, 'length_penalty', 'must be >= 0 (0: no length penalty).')
  require(
    config.max_decode_len_a >= 0,
    'max_decode_len_a',
    'must be >= 0 (outputs get at most a x source length + b tokens).',
  )
  require(
    _is_int(config.max_decode_len_b, 0)
    and (config.max_decode_len_a > 0 or config.max_decode_len_b > 0),
    'max_decode_len_b',
    'must be an integer >= 0, and above 0 where max_decode_len_a is 0.',
  )
  require(
    _is_int(config.beam_groups, 0),
    'beam_groups',
    'must be an integer >= 0 (0: auto, 2 on one CPU device, else 1).',
  )
  for field in ('min_decode_len', 'min_decode_words', 'no_repeat_ngram_size'):
    require(_is_int(config.get(field), 0), field, 'must be an integer >= 0 (0: off).')
  require(
    config.mbr_utility in MBR_UTILITIES,
    'mbr_utility',
    f"is unknown; use one of {MBR_UTILITIES} ('': the beam's best).",
  )
  require(
    not config.mbr_utility or config.beam_size >= 2,
    'mbr_utility',
    f"chooses among the beam's hypotheses: it needs config.beam_size >= 2, not "
    f'{config.beam_size} (eval.py: --beam_size=20, or --mbr=none).',
  )
  require(config.mbr_temperature >= 0, 'mbr_temperature', 'must be >= 0 (0: equal weights).')


def _require(config, ok, field, why):
  if not ok:
    raise ConfigError(f'config.{field}={config.get(field)!r} {why}')


def _is_int(value, minimum: int) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def read_saved_config(workdir: str):
  """The config of the run in `workdir` (its config.json), or None where there is none. A field
  the file lacks was added to the code later: it takes the value that reproduces the run
  (FIELDS_ADDED_LATER), else the default."""
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    return None
  config = default.get_config()
  config.update(FIELDS_ADDED_LATER)
  config.update(json.loads(path.read_text()))
  return config


def state_signature(config) -> list:
  """(path, shape, dtype) of every array of the training state `config` builds (parameters,
  optimizer state, moving average), traced without computing anything."""

  def build():
    _, params, _ = create_model(config, 0)
    return init_state(params, create_optimizer(config), config.ema_decay)

  return tree_signature(jax.eval_shape(build))


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


def check_resume(config, workdir: str):
  """On a workdir that holds a run, refuse a config under which the run cannot go on: one that
  changes the text it reads (TEXT_FIELDS), or the structure, shapes or dtypes of the state its
  checkpoints hold. Which fields do that is derived, not listed: each field that differs from
  the run's is applied alone to the run's config, and the state that builds is compared with
  the run's. Writes nothing."""
  saved = read_saved_config(workdir)
  if saved is None:
    return
  changed = sorted(f for f in config if f in saved and config[f] != saved[f])
  if not changed:
    return
  signature = state_signature(saved)
  for field in changed:
    was, now = saved[field], config[field]
    refuse = f'--workdir={workdir} holds a run with config.{field}={was!r}, not {now!r}'
    if field in TEXT_FIELDS:
      raise ConfigError(
        f'{refuse}: the field fixes the text the run reads and its vocabulary; '
        f'use a new --workdir or the same value.'
      )
    candidate = ml_collections.ConfigDict(saved.to_dict())
    candidate[field] = now
    try:
      other = state_signature(candidate)
    except ValueError:
      other = None
    if other != signature:
      difference = first_difference(signature, other)
      raise ConfigError(
        f'{refuse}: its checkpoints hold parameters or optimizer state that '
        f'this value changes ({difference}); use a new --workdir or the same '
        f'value.'
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
