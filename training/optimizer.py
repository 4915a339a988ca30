"""The learning-rate schedules and the optimizer (Adam or AdamW after gradient clipping)."""

import jax
import jax.numpy as jnp
import optax


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
  return optax.join_schedules(
    [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)], [warmup]
  )


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
  # A unit scale in the learning rate's place: its state (a step count) gives the checkpoints
  # the layout of optax.adam(w)(schedule).
  adam = optax.chain(*adam, optax.scale_by_schedule(lambda count: 1.0))
  if config.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adam)
  return adam
