"""Config and workdir checks, run before any data is read or anything compiles."""

import json
import os

import jax
from etils import epath

from input_pipeline import batching
from input_pipeline import tokenizer as tokenizer_lib
from model.transformer import TransformerConfig

SCHEDULES = ('rsqrt', 'cosine', 'constant')


OPTIMIZERS = ('adam', 'adamw')


# Fields that fix the parameters' shapes or the text they read: a resumed run keeps them.
MODEL_FIELDS = ('vocab_size', 'emb_dim', 'num_heads', 'num_encoder_layers', 'num_decoder_layers',
                'mlp_dim', 'max_len', 'position_embedding', 'share_embeddings',
                'tie_output_embedding', 'layer_norm', 'param_dtype', 'copy_attention', 'lowercase')


# Fields whose being 0 or not adds state to the checkpoints (a resume may change the value only):
# the field -> what its checkpoints then keep.
SWITCHED_FIELDS = {'ema_decay': 'the moving average of the parameters',
                   'qk_norm': "QKNorm's learned scales"}


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the fix."""


def validate_training_config(config):
  """Check every training field before any data is read or anything compiles."""
  try:
    TransformerConfig.from_config(config)  # the model fields, checked where they are defined
  except ValueError as e:
    raise ConfigError(str(e)) from None

  def require(ok, field, why):
    if not ok:
      raise ConfigError(f'config.{field}={config.get(field)!r} {why}')

  for field in ('num_train_steps', 'batch_size', 'eval_batch_size', 'max_tokens',
                'checkpoint_every_steps', 'keep_checkpoints', 'log_every_steps',
                'eval_every_steps', 'max_train_len', 'max_eval_len', 'pack_window', 'beam_size',
                'average_last'):
    value = config.get(field)
    require(isinstance(value, int) and not isinstance(value, bool) and value > 0, field,
            'must be a positive integer.')
  require(config.warmup_steps >= 0, 'warmup_steps', 'must be >= 0.')
  require(config.learning_rate > 0, 'learning_rate', 'must be positive.')
  require(0 <= config.label_smoothing < 1, 'label_smoothing', 'must be in [0, 1).')
  require(config.rdrop_alpha >= 0, 'rdrop_alpha', 'must be >= 0 (0: off).')
  require(0 <= config.ema_decay < 1, 'ema_decay', 'must be in [0, 1) (0: off; e.g. 0.999).')
  require(not config.rdrop_alpha or config.dropout_rate > 0 or config.attention_dropout_rate > 0
          or config.source_word_dropout > 0, 'rdrop_alpha',
          'needs dropout (config.dropout_rate, attention_dropout_rate or source_word_dropout > 0): '
          'without it the two passes are identical; set rdrop_alpha=0.')
  require(isinstance(config.loss_chunk_size, int) and config.loss_chunk_size >= 0,
          'loss_chunk_size', 'must be an integer >= 0 (0: plain logits path).')
  require(isinstance(config.beam_groups, int) and not isinstance(config.beam_groups, bool)
          and config.beam_groups >= 0, 'beam_groups',
          'must be an integer >= 0 (0: auto, 2 on one CPU device, else 1).')
  for field in ('min_decode_len', 'min_decode_words', 'no_repeat_ngram_size'):
    value = config.get(field)
    require(isinstance(value, int) and not isinstance(value, bool) and value >= 0, field,
            'must be an integer >= 0 (0: off).')
  require(config.time_budget_minutes >= 0, 'time_budget_minutes',
          'must be >= 0 (0: no budget, train config.num_train_steps).')
  require(config.grad_clip_norm >= 0, 'grad_clip_norm', 'must be >= 0 (0 disables).')
  require(config.schedule in SCHEDULES, 'schedule', f'is unknown; use one of {SCHEDULES}.')
  require(config.schedule != 'cosine' or max(config.warmup_steps, 1) < config.num_train_steps,
          'warmup_steps', f'must be below config.num_train_steps={config.num_train_steps} for the '
          'cosine schedule (it decays over the steps after warmup); lower it or train longer.')
  require(config.optimizer in OPTIMIZERS, 'optimizer', f'is unknown; use one of {OPTIMIZERS}.')
  require(config.weight_decay >= 0 and (config.weight_decay == 0 or config.optimizer == 'adamw'),
          'weight_decay', "must be >= 0, and needs config.optimizer='adamw' (adam has none).")
  require(config.batching in batching.BATCHINGS, 'batching',
          f'is unknown; use one of {batching.BATCHINGS}.')
  require(config.max_train_len <= config.max_len, 'max_train_len',
          f'must be <= config.max_len={config.max_len}.')
  target_len = config.max_target_len
  require(isinstance(target_len, int) and 0 <= target_len <= config.max_len, 'max_target_len',
          f'must be an integer in [0, config.max_len={config.max_len}] (0: max_train_len).')
  require(config.max_eval_len <= config.max_len, 'max_eval_len',
          f'must be <= config.max_len={config.max_len}.')
  require(config.vocab_model_type in tokenizer_lib.MODEL_TYPES, 'vocab_model_type',
          f'is unknown; use one of {tokenizer_lib.MODEL_TYPES}.')
  require(config.vocab_size > 4, 'vocab_size', 'must exceed the 4 special tokens.')
  alpha = config.subword_sampling_alpha
  require(alpha >= 0 and (alpha < 1 or config.vocab_model_type == 'unigram'),
          'subword_sampling_alpha', 'must be >= 0 (0: off), and below 1 for a BPE vocabulary '
          '(there it is the merge-dropout probability).')
  nbest = config.subword_sampling_nbest
  require(isinstance(nbest, int) and (nbest == -1 or nbest > 1), 'subword_sampling_nbest',
          'must be -1 (sample from all segmentations) or an integer > 1.')
  devices = jax.device_count()
  require(config.batch_size % devices == 0, 'batch_size',
          f'must be divisible by the {devices} devices.')
  require(config.eval_batch_size % devices == 0, 'eval_batch_size',
          f'must be divisible by the {devices} devices.')


def check_workdir(workdir: str):
  """Fail early, in one line, if the workdir cannot be written."""
  path = epath.Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f'.write_probe.{jax.process_index()}.{os.getpid()}'  # one per process
    probe.write_text('ok')
    probe.unlink()
  except OSError as e:
    raise ConfigError(f'--workdir={workdir} is not writable ({e.strerror or e}); choose a '
                      f'directory you can write to.') from None


def save_or_check_config(config, workdir: str):
  """Write config.json; on resume, refuse a config whose parameter shapes differ, or that turns
  the moving average of the parameters or QKNorm on or off (the checkpoints' structure)."""
  path = epath.Path(workdir) / 'config.json'
  if path.exists():
    saved = json.loads(path.read_text())
    changed = [f for f in MODEL_FIELDS if f in saved and saved[f] != config.get(f)]
    if changed:
      field = changed[0]
      raise ConfigError(f'--workdir={workdir} holds a run with config.{field}={saved[field]!r}, '
                        f'not {config.get(field)!r}; use a new --workdir or the same value.')
    for field, what in SWITCHED_FIELDS.items():  # on or off shapes the checkpoint; the value not
      was, now = saved.get(field, 0.0), config.get(field)  # absent: from before the field, off
      if bool(was) != bool(now):
        raise ConfigError(f'--workdir={workdir} holds a run with config.{field}={was!r}, '
                          f'not {now!r}; its checkpoints {"keep" if was else "lack"} {what}, so '
                          f'use a new --workdir or keep {field} {"> 0" if was else "at 0"}.')
  if jax.process_index() == 0:  # write-then-rename: other processes never see half a file
    partial = path.parent / 'config.json.partial'
    partial.write_text(config.to_json_best_effort(indent=2, sort_keys=True))
    partial.replace(path)
