"""The training state, the jit-compiled train step and the evaluation step."""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from core.parallel import BATCH_AXES, parse_rules, state_shardings
from model.architectures import create_model
from model.common import shift_right
from model.losses import cross_entropy_sums, fused_cross_entropy_sums, rdrop_cross_entropy_sums
from training.optimizer import create_learning_rate_schedule, create_optimizer


def _forward(model, batch, rngs=None, return_features=False):
  decoder_inputs = shift_right(batch['targets'], batch['targets_position'])
  return model(
    batch['inputs'],
    decoder_inputs,
    inputs_positions=batch['inputs_position'],
    targets_positions=batch['targets_position'],
    inputs_segmentation=batch['inputs_segmentation'],
    targets_segmentation=batch['targets_segmentation'],
    rngs=rngs,
    return_features=return_features,
  )


def loss_and_grads(params, batch, rng, **kwargs):
  """((mean loss, (NLL sum, correct sum, token count)), grads) of a batch (`batch_loss`)."""
  return jax.value_and_grad(batch_loss, has_aux=True)(params, batch, rng, **kwargs)


def batch_loss(
  params, batch, rng, *, graphdef, rest, label_smoothing, loss_chunk_size=0, rdrop_alpha=0.0
):
  """(mean loss, (NLL sum, correct sum, token count)) of a batch, dropout from rng.

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

  model = nnx.merge(graphdef, params, rest)
  rngs = nnx.Rngs(dropout=rng)  # every dropout of the model draws from this stream
  if loss_chunk_size:
    kernel, bias = model.output_projection()
    loss_sum, nll_sum, correct = fused_cross_entropy_sums(
      pairs(_forward(model, model_batch, rngs, return_features=True)),
      kernel,
      bias,
      batch['targets'],
      weights,
      label_smoothing,
      loss_chunk_size,
      model.matmul_dtype,
      rdrop_alpha,
    )
  elif rdrop_alpha:
    loss_sum, nll_sum, correct = rdrop_cross_entropy_sums(
      pairs(_forward(model, model_batch, rngs)),
      batch['targets'],
      weights,
      label_smoothing,
      rdrop_alpha,
    )
  else:
    loss_sum, nll_sum, correct = cross_entropy_sums(
      _forward(model, batch, rngs), batch['targets'], weights, label_smoothing
    )
  return loss_sum / num_tokens, (nll_sum, correct, num_tokens)


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


def accumulate_gradients(grad_fn, params, micro_batches, rng):
  """`grad_fn(params, batch, rng)`'s result for the union of micro-batches [k, rows, ...], one
  micro-batch in memory at a time: each one's mean loss and gradients weighted by its share of
  the target tokens, so k micro-batches give the loss and gradients of one batch k times
  larger (up to float rounding). Micro-batch i draws its dropout from fold_in(rng, i)."""
  total = jnp.maximum(jnp.sum(micro_batches['targets_segmentation'] > 0), 1).astype(jnp.float32)

  def add_micro_batch(sums, indexed):
    index, batch = indexed
    (loss, (nll_sum, correct, _)), grads = grad_fn(params, batch, jax.random.fold_in(rng, index))
    share = jnp.sum(batch['targets_segmentation'] > 0) / total
    loss_sum, nll_total, correct_total, grad_sum = sums
    return (
      loss_sum + share * loss,
      nll_total + nll_sum,
      correct_total + correct,
      jax.tree.map(lambda g, x: g + share * x, grad_sum, grads),
    ), None

  scalar = jnp.zeros((), jnp.float32)
  zeros = (scalar, scalar, scalar, jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params))
  steps = jnp.arange(micro_batches['targets'].shape[0])
  (loss, nll_sum, correct, grads), _ = jax.lax.scan(add_micro_batch, zeros, (steps, micro_batches))
  grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)  # summed in float32
  return (loss, (nll_sum, correct, total)), grads


def train_step(
  state,
  batch,
  time_position,
  *,
  graphdef,
  rest,
  tx,
  schedule,
  label_smoothing,
  dropout_key,
  loss_chunk_size=0,
  rdrop_alpha=0.0,
  ema_decay=0.0,
  grad_accum_steps=1,
):
  """One optimizer step on a global batch; returns (new state, metrics). With
  grad_accum_steps k > 1 the batch is [k, rows, ...]: k micro-batches, one update
  (`accumulate_gradients`).

  The learning rate is schedule(max(step, time_position)): time_position is 0 without a time
  budget, else where the elapsed share of the budget puts the schedule (TimeBudget)."""
  step = state['step']
  grad_fn = functools.partial(
    loss_and_grads,
    graphdef=graphdef,
    rest=rest,
    label_smoothing=label_smoothing,
    loss_chunk_size=loss_chunk_size,
    rdrop_alpha=rdrop_alpha,
  )
  rng = jax.random.fold_in(dropout_key, step)
  if grad_accum_steps == 1:
    (loss, (nll_sum, correct, num_tokens)), grads = grad_fn(state['params'], batch, rng)
  else:
    (loss, (nll_sum, correct, num_tokens)), grads = accumulate_gradients(
      grad_fn, state['params'], batch, rng
    )
  learning_rate = schedule(jnp.maximum(step.astype(jnp.float32), time_position))
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  updates = jax.tree.map(lambda u: -learning_rate * u, updates)
  params = optax.apply_updates(state['params'], updates)
  metrics = {
    'loss': loss,
    'nll': nll_sum / num_tokens,
    'accuracy': correct / num_tokens,
    'grad_norm': optax.global_norm(grads),
    'learning_rate': learning_rate,
    'tokens': num_tokens,
  }
  new_state = {'step': step + 1, 'params': params, 'opt_state': opt_state}
  if ema_decay:
    new_state['ema_params'] = optax.incremental_update(
      params, state['ema_params'], ema_step_size(step, ema_decay)
    )
  return new_state, metrics


def eval_step(params, batch, *, graphdef, rest):
  """Sums of (NLL, correct, tokens) over a padded evaluation batch."""
  weights = (batch['targets'] > 0).astype(jnp.float32)
  decoder_inputs = shift_right(batch['targets'])
  logits = nnx.merge(graphdef, params, rest)(batch['inputs'], decoder_inputs)
  _, nll_sum, correct = cross_entropy_sums(logits, batch['targets'], weights, 0.0)
  return {'nll_sum': nll_sum, 'correct': correct, 'tokens': jnp.sum(weights)}


@jax.jit
def all_finite(tree):
  """Whether every entry of every array of `tree` is finite (no NaN, no Inf)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class Training(NamedTuple):
  """What a training loop needs: model structure, optimizer, state, step and shardings.
  step_fn(state, batch, time_position) -> (state, metrics); time_position: see TimeBudget."""

  graphdef: Any
  rest: Any
  tx: Any
  state: dict
  step_fn: Any
  replicated: NamedSharding
  data_sharding: NamedSharding  # evaluation batches, and training batches without accumulation
  train_sharding: NamedSharding
  state_sharding: Any  # the state's tree of NamedShardings (`state_shardings`)


def create_training(config, mesh, abstract: bool = False, platform: str = '') -> Training:
  """Model, optimizer, the initial state placed on `mesh` by config.sharding_rules, and the
  jit-compiled train step; batches are split over the mesh's BATCH_AXES. abstract: the state
  as jax.ShapeDtypeStructs with their shardings, no optimizer state allocated (to compile and
  measure the step, benchmarks/memory.py). platform: the one the step is built for ('': JAX's
  default backend; 'cuda' or 'tpu' to export an accelerator's step here, tests/lowering.py)."""
  graphdef, params, rest = create_model(config, config.seed, platform)
  schedule = create_learning_rate_schedule(config)
  tx = create_optimizer(config)
  replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P(BATCH_AXES))
  # training batches: [rows, ...], or [k, rows, ...] for k micro-batches per update
  train_sharding = (
    data_sharding if config.grad_accum_steps == 1 else NamedSharding(mesh, P(None, BATCH_AXES))
  )
  if abstract:
    state = jax.eval_shape(functools.partial(init_state, tx=tx, ema_decay=config.ema_decay), params)
  else:
    state = init_state(params, tx, config.ema_decay)
  state_sharding = state_shardings(state, mesh, parse_rules(config.sharding_rules))
  if abstract:
    state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_sharding
    )
  else:
    state = jax.device_put(state, state_sharding)
  step_fn = jax.jit(
    functools.partial(
      train_step,
      graphdef=graphdef,
      rest=rest,
      tx=tx,
      schedule=schedule,
      label_smoothing=config.label_smoothing,
      dropout_key=jax.random.key(config.seed + 1),
      # the fused loss needs plain logits; copy attention mixes in copies
      loss_chunk_size=0 if config.copy_attention else config.loss_chunk_size,
      rdrop_alpha=config.rdrop_alpha,
      ema_decay=config.ema_decay,
      grad_accum_steps=config.grad_accum_steps,
    ),
    in_shardings=(state_sharding, train_sharding, replicated),
    out_shardings=(state_sharding, replicated),
    donate_argnums=0,
  )
  return Training(
    graphdef, rest, tx, state, step_fn, replicated, data_sharding, train_sharding, state_sharding
  )
