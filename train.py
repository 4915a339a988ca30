r"""Train an encoder-decoder Transformer: jit-compiled, data-parallel, resumable.

  python train.py --config=configs/default.py --workdir=runs/x [--config.num_heads=8 ...]

Rerunning the same command resumes from the latest checkpoint in the workdir (parameters,
optimizer state, step and the data iterator's position). The workdir receives config.json,
tokenizer.model, checkpoints/, metrics.jsonl and TensorBoard event files; eval.py needs only it.
Several processes (multi-host): pass --coordinator_address/--num_processes/--process_id, or
--distributed on TPU pods and SLURM where JAX detects them itself.
"""

import functools
import io
import json
import math
import os
import re
import signal
import socket
import sys
import time
from typing import Any, NamedTuple

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # TensorFlow (tfds) start-up banners

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import sacrebleu
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from input_pipeline import batching, datasets, tokenizer as tokenizer_lib
from model import decoding
from model.losses import cross_entropy_sums, fused_cross_entropy_sums, rdrop_cross_entropy_sums
from model.transformer import EncoderDecoder, count_params, shift_right, validate_config

FLAGS = flags.FLAGS


def define_flags():
  """Command-line flags (only when run as a script: eval.py imports this module)."""
  config_flags.DEFINE_config_file('config', 'configs/default.py', 'Training configuration.',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'Output directory (checkpoints, logs); may be gs://.')
  flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (auto-detect).')
  flags.DEFINE_string('coordinator_address', None, 'Multi-process: host:port of process 0.')
  flags.DEFINE_integer('num_processes', None, 'Multi-process: number of processes.')
  flags.DEFINE_integer('process_id', None, 'Multi-process: this process (0-based).')
  flags.DEFINE_bool('prepare_only', False, 'Check the config and data, build the vocabulary '
                    '(tokenizer.model) and config.json in --workdir, and exit without training: '
                    'runs that must share one vocabulary (an ensemble) copy it from there.')


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


# ----------------------------------------------------------------------------- config checks


def validate_training_config(config):
  """Check every training field before any data is read or anything compiles."""
  try:
    validate_config(config)
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


def absolute_path(path: str) -> epath.Path:
  """Local paths made absolute (orbax requires it); URIs such as gs://... kept as they are."""
  return epath.Path(path if '://' in path else os.path.abspath(path))


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


# ----------------------------------------------------------------------------- optimization


def create_learning_rate_schedule(config):
  """Peak `learning_rate` after linear warmup; then 1/sqrt(step) (the paper's), cosine or flat."""
  peak, warmup = config.learning_rate, max(config.warmup_steps, 1)
  if config.schedule == 'rsqrt':
    def schedule(step):
      step = jnp.maximum(step.astype(jnp.float32) + 1.0, 1.0)
      return peak * jnp.minimum(step / warmup, jnp.sqrt(warmup / step))
    return schedule
  if config.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, config.num_train_steps)
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup),
                               optax.constant_schedule(peak)], [warmup])


def decays_weight(params):
  """AdamW's mask: True for matrices (kernels, embedding tables), False for biases and norms."""
  def decays(path, _):
    name = str([k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1])
    return name.endswith('kernel') or name == 'embedding'
  return jax.tree_util.tree_map_with_path(decays, params)


def create_optimizer(config):
  """Adam or AdamW (decoupled decay of kernels and embeddings), after global-norm clipping,
  without the learning rate: train_step scales the update by the schedule at the step's
  position, which a time budget can move ahead of the step (TimeBudget). Step for step the same
  update as optax.adam(w)(schedule) (tests/test_train.py)."""
  adam = [optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)]
  if config.optimizer == 'adamw':
    adam.append(optax.add_decayed_weights(config.weight_decay, mask=decays_weight))
  # A unit scale in the learning rate's place: its state (a step count) keeps the checkpoint
  # layout of optax.adam(w)(schedule), so runs checkpointed before this change resume.
  adam = optax.chain(*adam, optax.scale_by_schedule(lambda count: 1.0))
  if config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adam)
  return adam


def _forward(model, batch, dropout_rng=None, return_features=False):
  decoder_inputs = shift_right(batch['targets'], batch['targets_position'])
  return model(batch['inputs'], decoder_inputs, inputs_positions=batch['inputs_position'],
               targets_positions=batch['targets_position'],
               inputs_segmentation=batch['inputs_segmentation'],
               targets_segmentation=batch['targets_segmentation'], dropout_rng=dropout_rng,
               return_features=return_features)


def loss_and_grads(params, batch, rng, *, graphdef, rest, label_smoothing, loss_chunk_size=0,
                   rdrop_alpha=0.0):
  """((mean loss, (NLL sum, correct sum, token count)), grads) of a batch, dropout from rng.

  loss_chunk_size > 0 takes the fused, chunked loss (model/losses.py), 0 the plain logits path;
  both give the same loss and gradients (tests/test_train.py). rdrop_alpha > 0 runs every row
  twice (two dropout masks) and adds R-Drop's KL term (`rdrop_cross_entropy_sums`).
  """
  weights = (batch['targets_segmentation'] > 0).astype(jnp.float32)
  num_tokens = jnp.maximum(jnp.sum(weights), 1.0)
  model_batch = batch
  if rdrop_alpha:  # rows 2i and 2i + 1 are row i's two passes
    model_batch = {k: jnp.repeat(v, 2, axis=0) for k, v in batch.items()}

  def pairs(x):  # rdrop: [2 * batch, length, ...] -> [batch, length, 2, ...]
    return jnp.swapaxes(x.reshape(-1, 2, *x.shape[1:]), 1, 2) if rdrop_alpha else x

  def loss_fn(params):
    model = nnx.merge(graphdef, params, rest)
    if loss_chunk_size:
      kernel, bias = model.output_projection()
      loss_sum, nll_sum, correct = fused_cross_entropy_sums(
          pairs(_forward(model, model_batch, rng, return_features=True)), kernel, bias,
          batch['targets'], weights, label_smoothing, loss_chunk_size, model.matmul_dtype,
          rdrop_alpha)
    elif rdrop_alpha:
      loss_sum, nll_sum, correct = rdrop_cross_entropy_sums(
          pairs(_forward(model, model_batch, rng)), batch['targets'], weights, label_smoothing,
          rdrop_alpha)
    else:
      loss_sum, nll_sum, correct = cross_entropy_sums(_forward(model, batch, rng),
                                                      batch['targets'], weights, label_smoothing)
    return loss_sum / num_tokens, (nll_sum, correct, num_tokens)

  return jax.value_and_grad(loss_fn, has_aux=True)(params)


def init_state(params, tx, ema_decay: float = 0.0) -> dict:
  """The training state: step, parameters, optimizer state and, with ema_decay > 0, an
  exponential moving average of the parameters ('ema_params', starting from a copy)."""
  state = {'step': jnp.array(0, jnp.int32), 'params': params, 'opt_state': tx.init(params)}
  if ema_decay:
    state['ema_params'] = jax.tree.map(jnp.array, params)  # own buffers: the state is donated
  return state


def ema_step_size(step, ema_decay: float):
  """1 - the decay applied after update `step` (0-based): the decay ramps up as
  min(ema_decay, (1 + step) / (10 + step)) (TensorFlow's ExponentialMovingAverage with
  num_updates), so early averages do not drag in the random initialisation."""
  step = step.astype(jnp.float32)
  return 1.0 - jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))


def train_step(state, batch, time_position, *, graphdef, rest, tx, schedule, label_smoothing,
               dropout_key, loss_chunk_size=0, rdrop_alpha=0.0, ema_decay=0.0):
  """One optimizer step on a global batch; returns (new state, metrics).

  The learning rate is schedule(max(step, time_position)): time_position is 0 without a time
  budget, else where the elapsed share of the budget puts the schedule (TimeBudget)."""
  step = state['step']
  (loss, (nll_sum, correct, num_tokens)), grads = loss_and_grads(
      state['params'], batch, jax.random.fold_in(dropout_key, step), graphdef=graphdef,
      rest=rest, label_smoothing=label_smoothing, loss_chunk_size=loss_chunk_size,
      rdrop_alpha=rdrop_alpha)
  learning_rate = schedule(jnp.maximum(step.astype(jnp.float32), time_position))
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  updates = jax.tree.map(lambda u: -learning_rate * u, updates)
  params = optax.apply_updates(state['params'], updates)
  metrics = {'loss': loss, 'nll': nll_sum / num_tokens, 'accuracy': correct / num_tokens,
             'grad_norm': optax.global_norm(grads), 'learning_rate': learning_rate,
             'tokens': num_tokens}
  new_state = {'step': step + 1, 'params': params, 'opt_state': opt_state}
  if ema_decay:
    new_state['ema_params'] = optax.incremental_update(params, state['ema_params'],
                                                       ema_step_size(step, ema_decay))
  return new_state, metrics


def eval_step(params, batch, *, graphdef, rest):
  """Sums of (NLL, correct, tokens) over a padded evaluation batch."""
  weights = (batch['targets'] > 0).astype(jnp.float32)
  decoder_inputs = shift_right(batch['targets'])
  logits = nnx.merge(graphdef, params, rest)(batch['inputs'], decoder_inputs)
  _, nll_sum, correct = cross_entropy_sums(logits, batch['targets'], weights, 0.0)
  return {'nll_sum': nll_sum, 'correct': correct, 'tokens': jnp.sum(weights)}


# ----------------------------------------------------------------------------- checkpoints


class Checkpoints:
  """Orbax checkpoints of {step, params, opt_state} plus the data iterator's JSON state.

  A checkpoint that fails to restore is moved aside to checkpoints/corrupt_<step> (never
  deleted) and the previous one is used.
  """

  def __init__(self, workdir: str, keep: int):
    self.directory = absolute_path(workdir) / 'checkpoints'
    # Synchronous saves: a failed save stops the run at once instead of in a background thread.
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False))

  def save(self, step: int, state, data_state: dict):
    if step in self.manager.all_steps():
      return  # already saved (e.g. the final step after a resume); never overwrite
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))

  def restore_latest(self, abstract_state, log=print):
    """(state, data_state) of the newest checkpoint that restores, or (None, None)."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return restored['state'], restored['data']
      except Exception as e:  # pylint: disable=broad-except
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        aside = self.directory / f'corrupt_{step}'
        log(f'checkpoint step {step} failed to restore ({type(e).__name__}: {reason}); '
            f'moved to {aside}, trying the previous one.')
        if jax.process_index() == 0:
          (self.directory / str(step)).rename(aside)
        self.manager.reload()
    return None, None

  def restore_params(self, step: int, abstract_params, key: str = 'params'):
    """The parameters ('params', or 'ema_params' for their moving average) at `step`, as NumPy
    arrays shaped like `abstract_params`. Only that subtree is read (a partial restore): not the
    optimizer's moments, twice the parameters' size, nor the rest of the state. Use an instance
    for this or for restore_latest, not both (orbax binds the restore type on first use)."""
    item = {key: abstract_params}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=restore_args, partial_restore=True)))['state'][key]

  def wait(self):
    self.manager.wait_until_finished()


# ----------------------------------------------------------------------------- setup (eval.py too)


def create_model(config, seed: int):
  """(graphdef, params, rest): the model split into structure, parameters and constants."""
  model = EncoderDecoder(config, rngs=nnx.Rngs(seed))
  return nnx.split(model, nnx.Param, ...)


class Training(NamedTuple):
  """What a training loop needs: model structure, optimizer, state, step and shardings.
  step_fn(state, batch, time_position) -> (state, metrics); time_position: see TimeBudget."""
  graphdef: Any
  rest: Any
  tx: Any
  state: dict
  step_fn: Any
  replicated: NamedSharding
  data_sharding: NamedSharding


def create_training(config, mesh) -> Training:
  """Model, optimizer, replicated initial state and the jit-compiled, sharded train step."""
  graphdef, params, rest = create_model(config, config.seed)
  schedule = create_learning_rate_schedule(config)
  tx = create_optimizer(config)
  replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  state = jax.device_put(init_state(params, tx, config.ema_decay), replicated)
  step_fn = jax.jit(
      functools.partial(train_step, graphdef=graphdef, rest=rest, tx=tx, schedule=schedule,
                        label_smoothing=config.label_smoothing,
                        dropout_key=jax.random.key(config.seed + 1),
                        # the fused loss needs plain logits; copy attention mixes in copies
                        loss_chunk_size=0 if config.copy_attention else config.loss_chunk_size,
                        rdrop_alpha=config.rdrop_alpha, ema_decay=config.ema_decay),
      in_shardings=(replicated, data_sharding, replicated),
      out_shardings=(replicated, replicated), donate_argnums=0)
  return Training(graphdef, rest, tx, state, step_fn, replicated, data_sharding)


def make_mesh():
  """A 1-D mesh named 'data' over every device of every process."""
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def global_batch(local_batch: dict, sharding):
  """This process's rows -> global arrays sharded over the 'data' axis."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def process_rows(array):
  """This process's contiguous share of the rows of a batch every process holds whole."""
  rows = array.shape[0] // jax.process_count()
  return array[jax.process_index() * rows:(jax.process_index() + 1) * rows]


def to_host(tree):
  """NumPy values of (possibly multi-process) arrays: replicated ones read from a local shard,
  sharded ones gathered from every process."""
  def fetch(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(fetch, tree)


def decoding_options(config, tok):
  """The keyword arguments of decoding.greedy_decode / beam_search that the config sets: the
  output length budget and the constraints on the output."""
  options = dict(len_a=config.max_decode_len_a, len_b=config.max_decode_len_b,
                 min_len=config.min_decode_len, min_words=config.min_decode_words,
                 no_repeat_ngram=config.no_repeat_ngram_size)
  if options['min_words']:
    options['word_start'] = jnp.asarray(tok.word_starts())
  return options


def make_greedy_fn(graphdef, rest, config, tok):
  options = decoding_options(config, tok)

  @functools.partial(jax.jit, static_argnames=('max_len',))
  def greedy(params, inputs, max_len):
    model = nnx.merge(graphdef, params, rest)
    return decoding.greedy_decode(model, inputs, max_len=max_len, **options)
  return greedy


def decode_length(config, inputs_width: int) -> int:
  return min(config.max_len, int(config.max_decode_len_a * inputs_width + config.max_decode_len_b))


# ----------------------------------------------------------------------------- logging


class TensorBoardWriter:
  """Scalars in TensorBoard's event-file format (TFRecord-framed `Event` protos), written with
  tensorboard's own modules: clu's writers import TensorFlow, ~600 MB more RSS per process."""

  def __init__(self, logdir: str):
    name = f'events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}'
    self.records = RecordWriter((epath.Path(logdir) / name).open('wb'))
    self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def write_scalars(self, step: int, scalars: dict):
    values = [summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()]
    self._write(event_pb2.Event(wall_time=time.time(), step=step,
                                summary=summary_pb2.Summary(value=values)))

  def _write(self, event):
    self.records.write(event.SerializeToString())
    self.records.flush()


class MetricsLog:
  """metrics.jsonl + TensorBoard from process 0; concise lines on stdout."""

  def __init__(self, workdir: str):
    self.is_main = jax.process_index() == 0
    self.writer = TensorBoardWriter(workdir) if self.is_main else None
    self.jsonl = epath.Path(workdir) / 'metrics.jsonl'

  def write(self, step: int, scalars: dict):
    scalars = {k: float(v) for k, v in scalars.items()}
    if self.is_main:
      self.writer.write_scalars(step, scalars)
      with self.jsonl.open('a') as f:
        f.write(json.dumps({'step': step, 'time': time.time(), **scalars}) + '\n')

  def print(self, message: str):
    if self.is_main:
      print(message, flush=True)


def _format_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  return f'{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m' if seconds >= 3600 else \
      f'{int(seconds // 60)}m{int(seconds % 60):02d}s'


# ----------------------------------------------------------------------------- evaluation


def rouge(hypotheses, reference_lists, reduce: str = 'max'):
  """ROUGE-1/2/Lsum F1 x 100 (Porter stemming); with several references per hypothesis, the
  best (reduce='max') or the mean ('mean') over them. rougeLsum splits on newlines
  (split_summaries=True would need nltk data)."""
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  names = ('rouge1', 'rouge2', 'rougeLsum')
  scorer = rouge_scorer.RougeScorer(list(names), use_stemmer=True)
  f1 = []  # [example, metric]
  for hypothesis, references in zip(hypotheses, reference_lists):
    if reduce == 'max':
      best = scorer.score_multi(references, hypothesis)
      f1.append([best[name].fmeasure for name in names])
      continue
    each = [scorer.score(reference, hypothesis) for reference in references]
    f1.append([np.mean([s[name].fmeasure for s in each]) for name in names])
  # The plain mean over examples: rouge-score's BootstrapAggregator reports the median of
  # unseeded resamples, which moves the second decimal from call to call.
  return dict(zip(names, 100 * np.mean(np.reshape(f1, (-1, len(names))), axis=0)))


def evaluate(params, eval_fn, greedy_fn, eval_data, tok, config, sharding, num_bleu_batches,
             prefix='eval'):
  """Validation NLL/accuracy over the whole split; BLEU (and ROUGE for summarization) on the
  first greedy-decoded batches; metric names '<prefix>/<name>'."""
  sources, targets, references = eval_data
  totals = {'nll_sum': 0.0, 'correct': 0.0, 'tokens': 0.0}
  hypotheses, refs = [], []
  for i, batch in enumerate(batching.eval_batches(sources, config.eval_batch_size,
                                                  config.max_eval_len, targets)):
    arrays = global_batch({'inputs': process_rows(batch['inputs']),
                           'targets': process_rows(batch['targets'])}, sharding)
    for k, v in to_host(eval_fn(params, arrays)).items():
      totals[k] += float(v)
    if i < num_bleu_batches:
      width = batch['inputs'].shape[1]
      out = to_host(greedy_fn(params, arrays['inputs'], max_len=decode_length(config, width)))
      for row, index in enumerate(batch['index']):
        if index >= 0:
          hypotheses.append(tok.decode(out[row]))
          refs.append(references[index])
  tokens = max(totals['tokens'], 1.0)
  metrics = {'nll': totals['nll_sum'] / tokens, 'accuracy': totals['correct'] / tokens}
  metrics['perplexity'] = math.exp(min(metrics['nll'], 50))
  if hypotheses:
    metrics['bleu'] = sacrebleu.corpus_bleu(hypotheses, [refs]).score
    if config.task == 'summarization':
      metrics.update(rouge(hypotheses, [[ref] for ref in refs]))
  return {f'{prefix}/{name}': value for name, value in metrics.items()}


# ----------------------------------------------------------------------------- main loop


class TimeBudget:
  """config.time_budget_minutes: a cap on the run's wall time that the schedule follows.

  Time counts from the start of train_and_evaluate (data, vocabulary and compilation included)
  and carries over resumes (checkpoints store it); downtime between them does not count. The
  learning-rate schedule runs at max(step, time position): config.num_train_steps x the share
  spent of the training time, which runs from the first logged step (so set-up and compilation
  do not move the schedule, and the first steps take the schedule's first rates) to the end of
  the budget less the last evaluation's duration (held back for the final one). On a machine
  fast enough for all the steps the run is the step-based one; on a slower one the schedule runs
  on wall time, completes its decay as the budget is spent, and training stops there, short of
  num_train_steps. Processes agree on process 0's clock (one broadcast per check), so they take
  the same rates and stop together.
  """

  clock = staticmethod(time.monotonic)  # tests substitute their own

  def __init__(self, minutes: float, num_train_steps: int):
    self.seconds = 60.0 * minutes
    self.num_train_steps = num_train_steps
    self.origin = self.clock()  # moved back by the time of earlier runs on resume
    self.reserve = 0.0          # seconds of the last evaluation
    self.start = None           # elapsed seconds at the first logged step: the schedule's zero

  def resume(self, saved: dict):
    """Take (and remove) what `to_save` put into a checkpoint's data state."""
    self.origin -= saved.pop('elapsed_seconds', 0.0)  # absent in older checkpoints
    self.start = saved.pop('schedule_clock_start', None)

  def to_save(self) -> dict:
    elapsed = self.check()[0]
    return {'elapsed_seconds': elapsed,
            **({} if self.start is None else {'schedule_clock_start': self.start})}

  def check(self, training: bool = False):
    """(elapsed seconds, time position, whether the budget is spent), the same in every process;
    the first check with `training` starts the schedule's clock."""
    elapsed, reserve = self.clock() - self.origin, self.reserve
    if jax.process_count() > 1:
      elapsed, reserve = (float(v) for v in multihost_utils.broadcast_one_to_all(
          np.array([elapsed, reserve], np.float32)))
    if training and self.start is None:
      self.start = elapsed
    return (elapsed, *budget_position(elapsed, self.start, reserve, self.seconds,
                                      self.num_train_steps))


def budget_position(elapsed: float, start, reserve: float, budget: float, num_train_steps: int):
  """(time position, spent) at `elapsed` seconds of a `budget` (0: none) of which `reserve` is
  held back, the schedule's clock having started at `start` (None: not yet, position 0): the
  position is num_train_steps x (elapsed - start) / (budget - reserve - start), at most
  num_train_steps, which it reaches as the budget is spent."""
  if budget <= 0:
    return 0.0, False
  spent = elapsed + reserve >= budget
  if start is None:
    return 0.0, spent
  share = (elapsed - start) / max(budget - reserve - start, 1e-9)
  return num_train_steps * min(max(share, 0.0), 1.0), spent


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
      return tuple(np.split(saved[f'{side}_tokens'], np.cumsum(saved[f'{side}_lengths'])[:-1])
                   for side in ('sources', 'targets'))

  return read_or_draw


def load_data(config, workdir, log):
  """Training iterator, the run's tokenizer and tokenized validation data."""
  train_examples, skipped = datasets.load_examples(config, config.train_split)
  if jax.process_index() == 0:
    tok = tokenizer_lib.load_or_train(config, workdir, train_examples)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('tokenizer')
  if jax.process_index() != 0:
    tok = tokenizer_lib.Tokenizer(os.path.join(workdir, tokenizer_lib.FILENAME))
  if tok.vocab_size != config.vocab_size:
    raise ConfigError(f'config.vocab_size={config.vocab_size} but the tokenizer in {workdir} '
                      f'has {tok.vocab_size} pieces; use a new --workdir.')
  gap_pairs = datasets.gap_sentence_examples(train_examples) if config.gap_sentences else []
  texts = ([e['source'] for e in train_examples + gap_pairs],
           [e['target'] for e in train_examples + gap_pairs])

  def tokenize(encode):
    sources, targets = encode(texts[0]), encode(texts[1])
    if config.truncate_inputs:
      sources = [batching.truncate(s, config.max_train_len) for s in sources]
    return sources, targets

  def resample(epoch):
    del epoch  # every call draws anew; saved_samples keeps each epoch's draw
    return tokenize(functools.partial(tok.sample_encode, alpha=config.subword_sampling_alpha,
                                      nbest_size=config.subword_sampling_nbest))

  sources, targets = tokenize(tok.encode)
  train_iter = batching.TrainIterator(
      sources, targets, batching=config.batching, batch_size=config.batch_size,
      max_len=config.max_train_len, max_tokens=config.max_tokens, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count(),
      row_multiple=jax.local_device_count(), max_target_len=config.max_target_len or None,
      pack_window=config.pack_window,
      resample=saved_samples(workdir, resample) if config.subword_sampling_alpha > 0 else None)
  limits = f'max_train_len={config.max_train_len}' + (
      f', max_target_len={config.max_target_len}' if config.max_target_len else '')
  gap = f' + {len(gap_pairs)} gap-sentence pairs' if gap_pairs else ''
  log(f'data: {config.dataset} {config.train_split}: {len(train_examples)} pairs{gap} '
      f'({skipped} empty skipped, {train_iter.dropped} longer than {limits} dropped); '
      f'vocabulary {tok.vocab_size} ({tok.path})')
  eval_examples, _ = datasets.load_examples(config, config.eval_split)
  eval_data = (tok.encode([e['source'] for e in eval_examples]),
               tok.encode([e['target'] for e in eval_examples]),
               [e['target'] for e in eval_examples])
  return train_iter, tok, eval_data


def train_and_evaluate(config, workdir: str, prepare_only: bool = False):
  """Train `config` in `workdir`, resuming from its latest checkpoint; returns final metrics.
  `prepare_only`: stop once the config, data and vocabulary are checked and saved (no model)."""
  validate_training_config(config)
  budget = TimeBudget(config.time_budget_minutes, config.num_train_steps)
  check_workdir(workdir)
  save_or_check_config(config, workdir)
  log = MetricsLog(workdir)
  train_iter, tok, eval_data = load_data(config, workdir, log.print)
  if prepare_only:
    log.print(f'prepared {workdir}: config, data and vocabulary checked, nothing trained '
              f'(--prepare_only); the same command without it trains.')
    return {}

  training = create_training(config, make_mesh())
  graphdef, rest, state = training.graphdef, training.rest, training.state
  replicated, data_sharding = training.replicated, training.data_sharding
  log.print(f'model: {count_params(nnx.merge(graphdef, state["params"], rest)):,} parameters; '
            f'{jax.device_count()} devices ({jax.devices()[0].platform}), '
            f'{jax.process_count()} processes')
  checkpoints = Checkpoints(workdir, config.keep_checkpoints)
  restored, data_state = checkpoints.restore_latest(
      jax.tree.map(ocp.utils.to_shape_dtype_struct, state), log.print)
  if restored is not None:
    state = jax.device_put(restored, replicated)
    budget.resume(data_state)
    train_iter.set_state(data_state)
    log.print(f'resumed from step {int(to_host(state["step"]))} (data epoch '
              f'{data_state["epoch"]}, example {data_state["index"]})')
  step_fn = training.step_fn
  eval_fn = jax.jit(functools.partial(eval_step, graphdef=graphdef, rest=rest),
                    in_shardings=(replicated, data_sharding), out_shardings=replicated)
  greedy_fn = make_greedy_fn(graphdef, rest, config, tok)

  stop_signal = []
  previous_handlers = {sig: signal.signal(sig, lambda signum, _: stop_signal.append(signum))
                       for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    return _train_loop(config, state, train_iter, step_fn, eval_fn, greedy_fn, checkpoints, log,
                       tok, eval_data, data_sharding, stop_signal, budget, replicated)
  finally:
    for sig, handler in previous_handlers.items():
      signal.signal(sig, handler)


def _train_loop(config, state, train_iter, step_fn, eval_fn, greedy_fn, checkpoints, log, tok,
                eval_data, data_sharding, stop_signal, budget, replicated):
  """Steps until config.num_train_steps, the time budget or a stop signal; checkpoints, logs and
  evaluates."""
  step = int(to_host(state['step']))
  pending, window_start, window_steps = [], time.time(), 0
  metrics = {}
  elapsed, position, spent = budget.check()
  time_position = jax.device_put(np.float32(position), replicated)
  if budget.seconds:
    log.print(f'time budget: {config.time_budget_minutes:g} min (config.time_budget_minutes; 0 '
              f'turns it off), {elapsed / 60:.1f} used: training stops at step '
              f'{config.num_train_steps} or when it is spent, the schedule following whichever '
              f'comes first.')
  if spent and step < config.num_train_steps:
    log.print(f'the time budget was spent at step {step}: nothing to train. To go on, raise '
              f'config.time_budget_minutes.')
    return metrics

  def check_finite():
    """Raise naming the first step whose loss is NaN/Inf (the last good checkpoint stays)."""
    for s, m in pending:
      loss = float(to_host(m['loss']))
      if not np.isfinite(loss):
        good = checkpoints.manager.latest_step()
        raise FloatingPointError(
            f'loss is {loss} at step {s}; stopping. The last good checkpoint '
            f'(step {good}) is kept. Lower config.learning_rate or raise config.warmup_steps.')

  def save(step):
    check_finite()
    checkpoints.save(step, state, {**train_iter.get_state(), **budget.to_save()})

  while step < config.num_train_steps and not spent:
    batch = global_batch(next(train_iter), data_sharding)
    state, step_metrics = step_fn(state, batch, time_position)
    step += 1
    pending.append((step, step_metrics))
    window_steps += 1
    if step % config.log_every_steps == 0 or step == config.num_train_steps or stop_signal:
      check_finite()
      fetched = to_host([m for _, m in pending])
      elapsed, position, spent = budget.check(training=True)
      time_position = jax.device_put(np.float32(position), replicated)
      seconds = time.time() - window_start
      window_tokens = sum(m['tokens'] for m in fetched)
      last = fetched[-1]
      means = {k: float(np.mean([m[k] for m in fetched])) for k in ('loss', 'nll', 'accuracy',
                                                                    'grad_norm')}
      metrics = {f'train/{k}': v for k, v in means.items()}
      metrics.update({'train/perplexity': math.exp(min(means['nll'], 50)),
                      'train/learning_rate': float(last['learning_rate']),
                      'train/tokens_per_sec': window_tokens / seconds,
                      'train/steps_per_sec': window_steps / seconds,
                      'train/padding_fraction': train_iter.padding_fraction,
                      'train/elapsed_minutes': elapsed / 60})
      log.write(step, metrics)
      eta = (config.num_train_steps - step) / max(metrics['train/steps_per_sec'], 1e-9)
      if budget.seconds:
        eta = min(eta, max(budget.seconds - budget.reserve - elapsed, 0.0))
      log.print(f'step {step}/{config.num_train_steps} | loss {means["loss"]:.3f} '
                f'ppl {metrics["train/perplexity"]:.2f} acc {means["accuracy"]:.3f} | '
                f'lr {metrics["train/learning_rate"]:.2e} gnorm {means["grad_norm"]:.2f} | '
                f'{metrics["train/tokens_per_sec"]:,.0f} tok/s '
                f'{metrics["train/steps_per_sec"]:.2f} step/s '
                f'pad {100 * train_iter.padding_fraction:.0f}% | ETA {_format_eta(eta)}')
      pending, window_start, window_steps = [], time.time(), 0
    if stop_signal:
      save(step)
      checkpoints.wait()
      log.print(f'received signal {stop_signal[0]}: saved checkpoint at step {step}; '
                f'rerun the same command to resume.')
      return metrics
    last_step = step == config.num_train_steps or spent
    if spent and step < config.num_train_steps:
      log.print(f'time budget of {config.time_budget_minutes:g} min spent at step {step} '
                f'({elapsed / 60:.1f} min, the schedule at step {position:.0f} of '
                f'{config.num_train_steps}): final checkpoint and validation.')
    if step % config.checkpoint_every_steps == 0 or last_step:
      save(step)
    if step % config.eval_every_steps == 0 or last_step:
      eval_start = budget.clock()
      eval_metrics = evaluate(state['params'], eval_fn, greedy_fn, eval_data, tok, config,
                              data_sharding, config.num_eval_bleu_batches)
      if 'ema_params' in state:
        eval_metrics.update(evaluate(state['ema_params'], eval_fn, greedy_fn, eval_data, tok,
                                     config, data_sharding, config.num_eval_bleu_batches,
                                     prefix='eval_ema'))
      budget.reserve = budget.clock() - eval_start
      log.write(step, eval_metrics)
      metrics.update(eval_metrics)
      log.print(f'eval at step {step} | ' + ' '.join(
          f'{k.replace("eval/", "").replace("eval_ema/", "ema_")} {v:.3f}'
          for k, v in eval_metrics.items()))
      window_start = time.time()  # evaluation time does not count against training speed
  checkpoints.wait()
  if 'eval/bleu' in metrics:
    log.print(f'final validation BLEU ({config.num_eval_bleu_batches} greedy batches, '
              f'SacreBLEU): {metrics["eval/bleu"]:.2f}')
  return metrics


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS.workdir:
    sys.exit('error: --workdir is required (the output directory of the run).')
  logging.set_verbosity(logging.WARNING)  # orbax INFO lines drown the progress lines
  if FLAGS.distributed or FLAGS.num_processes:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  try:
    train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.prepare_only)
  except (ConfigError, datasets.DataError, FloatingPointError) as e:
    sys.exit(f'error: {e}')


def _unknown_field(error) -> str:
  text = str(error).replace('\\n', ' ').replace("\\'", "'")
  names = re.findall(r"'(\w+)'", text)
  hint = re.search(r'Did you mean "(\w+)"', text)
  return (f'error: --config.{names[0] if names else "?"} is not a config field'
          + (f'; did you mean --config.{hint.group(1)}?' if hint else '.'))


def parse_flags(argv):
  """absl flag parsing, with an unknown --config.field as one line instead of a traceback."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'FATAL Flags parsing error: {e}')
  except (AttributeError, KeyError) as e:
    sys.exit(_unknown_field(e))


if __name__ == '__main__':
  try:
    define_flags()  # ml_collections applies --config.x overrides here, from sys.argv
  except (AttributeError, KeyError) as e:
    sys.exit(_unknown_field(e))
  app.run(main, flags_parser=parse_flags)
