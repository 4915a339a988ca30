"""The training config's checks, before any data is read or anything compiles: every field, and
whether a workdir's run can go on under it."""

import functools

import jax
import ml_collections

from core import parallel
from core.config import (
  ConfigError,
  check_decoding,
  first_difference,
  is_int,
  read_saved_config,
  require,
  tree_signature,
)
from input_pipeline import batching
from input_pipeline import tokenizer as tokenizer_lib
from model.architectures import create_model, model_config
from training.optimizer import create_optimizer
from training.profiling import parse_profile_steps
from training.steps import init_state

SCHEDULES = ('rsqrt', 'cosine', 'constant')
OPTIMIZERS = ('adam', 'adamw')
TASKS = ('translation', 'summarization')
# Fields that fix the text a run reads and writes: its tokenizer and data stay the run's.
TEXT_FIELDS = ('lowercase', 'vocab_model_type', 'source_lang', 'target_lang')


def validate_training_config(config):
  """Check every training field before any data is read or anything compiles."""
  try:
    model_config(config)  # the model fields, checked where they are defined
  except ValueError as e:
    raise ConfigError(str(e)) from None

  check = functools.partial(require, config)
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
    check(is_int(config.get(field), 1), field, 'must be a positive integer.')
  check(
    config.grad_accum_steps == 1 or config.batching == 'packed',
    'grad_accum_steps',
    "> 1 needs config.batching='packed' (micro-batches of one shape).",
  )
  check(config.task in TASKS, 'task', f'is unknown; use one of {TASKS}.')
  try:
    parse_profile_steps(config.profile_steps)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  check(is_int(config.seed, 0), 'seed', 'must be an integer >= 0.')
  check(
    is_int(config.num_eval_bleu_batches, 0),
    'num_eval_bleu_batches',
    'must be an integer >= 0 (0: no BLEU during training).',
  )
  check(config.warmup_steps >= 0, 'warmup_steps', 'must be >= 0.')
  check(config.learning_rate > 0, 'learning_rate', 'must be positive.')
  check(0 <= config.label_smoothing < 1, 'label_smoothing', 'must be in [0, 1).')
  check(config.rdrop_alpha >= 0, 'rdrop_alpha', 'must be >= 0 (0: off).')
  check(0 <= config.ema_decay < 1, 'ema_decay', 'must be in [0, 1) (0: off; e.g. 0.999).')
  check(
    not config.rdrop_alpha
    or config.dropout_rate > 0
    or config.attention_dropout_rate > 0
    or config.source_word_dropout > 0,
    'rdrop_alpha',
    'needs dropout (config.dropout_rate, attention_dropout_rate or source_word_dropout > 0): '
    'without it the two passes are identical; set rdrop_alpha=0.',
  )
  check(
    isinstance(config.loss_chunk_size, int) and config.loss_chunk_size >= 0,
    'loss_chunk_size',
    'must be an integer >= 0 (0: plain logits path).',
  )
  check(
    config.time_budget_minutes >= 0,
    'time_budget_minutes',
    'must be >= 0 (0: no budget, train config.num_train_steps).',
  )
  check(config.grad_clip_norm >= 0, 'grad_clip_norm', 'must be >= 0 (0 disables).')
  check(config.schedule in SCHEDULES, 'schedule', f'is unknown; use one of {SCHEDULES}.')
  check(
    config.schedule != 'cosine' or max(config.warmup_steps, 1) < config.num_train_steps,
    'warmup_steps',
    f'must be below config.num_train_steps={config.num_train_steps} for the '
    'cosine schedule (it decays over the steps after warmup); lower it or train longer.',
  )
  check(config.optimizer in OPTIMIZERS, 'optimizer', f'is unknown; use one of {OPTIMIZERS}.')
  check(
    config.weight_decay >= 0 and (config.weight_decay == 0 or config.optimizer == 'adamw'),
    'weight_decay',
    "must be >= 0, and needs config.optimizer='adamw' (adam has none).",
  )
  check(
    config.batching in batching.BATCHINGS,
    'batching',
    f'is unknown; use one of {batching.BATCHINGS}.',
  )
  check(
    config.max_train_len <= config.max_len,
    'max_train_len',
    f'must be <= config.max_len={config.max_len}.',
  )
  target_len = config.max_target_len
  check(
    isinstance(target_len, int) and 0 <= target_len <= config.max_len,
    'max_target_len',
    f'must be an integer in [0, config.max_len={config.max_len}] (0: max_train_len).',
  )
  check(
    config.max_eval_len <= config.max_len,
    'max_eval_len',
    f'must be <= config.max_len={config.max_len}.',
  )
  check(
    config.vocab_model_type in tokenizer_lib.MODEL_TYPES,
    'vocab_model_type',
    f'is unknown; use one of {tokenizer_lib.MODEL_TYPES}.',
  )
  check(config.vocab_size > 4, 'vocab_size', 'must exceed the 4 special tokens.')
  alpha = config.subword_sampling_alpha
  check(
    alpha >= 0 and (alpha < 1 or config.vocab_model_type == 'unigram'),
    'subword_sampling_alpha',
    'must be >= 0 (0: off), and below 1 for a BPE vocabulary '
    '(there it is the merge-dropout probability).',
  )
  nbest = config.subword_sampling_nbest
  check(
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
    check(
      config[field] % (data * fsdp) == 0,
      field,
      f'must be divisible by the {data * fsdp} devices of the mesh axes data and fsdp.',
    )
  check_decoding(config)


def state_signature(config) -> list:
  """(path, shape, dtype) of every array of the training state `config` builds (parameters,
  optimizer state, moving average), traced without computing anything."""

  def build():
    _, params, _ = create_model(config, 0)
    return init_state(params, create_optimizer(config), config.ema_decay)

  return tree_signature(jax.eval_shape(build))


def check_resume(config, workdir: str):
  """On a workdir that holds a run, refuse a config under which the run cannot go on: one that
  changes the text it reads (TEXT_FIELDS), or the structure, shapes or dtypes of the state its
  checkpoints hold. Which fields do that is derived, not listed: each field that differs from
  the run's is applied alone to the run's config, and the state that builds is compared with
  the run's. Writes nothing."""
  saved = read_saved_config(workdir)
  if saved is None:
    return
  missing = sorted(set(config) - set(saved))
  if missing:
    raise ConfigError(
      f'--workdir={workdir} holds a run whose config.json lacks config.'
      f'{", config.".join(missing)}: it was written by another layout of the config; add them '
      f'with the values the run was trained with, or use a new --workdir.'
    )
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
