"""What both architectures share: the typed-config base, parameters that carry logical axis
names for sharding, dropout, token embeddings and the output projection, and teacher forcing's
inputs."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from model.fast_ops import matmul, techniques
from model.special_tokens import BOS_ID


class ModelConfig:
  """What the architectures' typed configs share: building one from an experiment config, and
  checks of their fields that raise ValueError naming the field and what it must be."""

  @classmethod
  def config_fields(cls) -> tuple:
    """The fields an experiment config gives: all but `platform`, where the program runs."""
    return tuple(field.name for field in dataclasses.fields(cls) if field.name != 'platform')

  @classmethod
  def from_config(cls, config, platform: str = ''):
    """The model's fields of an experiment config (a ConfigDict or any mapping), for programs
    built for `platform` ('': JAX's default backend; see `fast_ops.platform_of`)."""
    return cls(**{name: config[name] for name in cls.config_fields()}, platform=platform)

  def fail(self, field, why):
    raise ValueError(f'config.{field}={getattr(self, field)!r} {why}')

  def check_fields(self, positive=(), choices=(), rates=(), flags=()):
    """positive: integers > 0; choices: (field, allowed values); rates: in [0, 1); flags: bools."""
    for field in positive:
      value = getattr(self, field)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        self.fail(field, 'must be a positive integer.')
    for field, allowed in choices:
      if getattr(self, field) not in allowed:
        self.fail(field, f'is unknown; use one of {allowed}.')
    for field in rates:
      if not 0.0 <= getattr(self, field) < 1.0:
        self.fail(field, 'must be in [0, 1).')
    for field in flags:
      if not isinstance(getattr(self, field), bool):
        self.fail(field, 'must be True or False.')


def logical_param(value, *axes):
  """A parameter with its logical axis names (flax's `out_sharding` metadata), e.g. 'embed',
  'heads', 'mlp', 'vocab'; core/parallel.py's `state_shardings` maps them to mesh axes by the
  config's rules."""
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def logical_init(initializer, *axes):
  """`initializer` whose parameter carries the logical axis names `axes` (see logical_param)."""
  return nnx.with_partitioning(initializer, axes, eager_sharding=False)


def logical_linear(inputs: int, outputs: int, axes, dtype, param_dtype, rngs, use_bias=True):
  """nnx.Linear (its default initializers) whose kernel and bias carry logical axis names."""
  return nnx.Linear(
    inputs,
    outputs,
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=param_dtype,
    kernel_init=logical_init(nnx.initializers.lecun_normal(), *axes),
    bias_init=logical_init(nnx.initializers.zeros_init(), axes[1]),
    rngs=rngs,
  )


class Dropout(nnx.Dropout):
  """`nnx.Dropout` (inverted dropout at `rate`, the mask shared along `broadcast_dims`, its key
  drawn from the `dropout` stream of the `nnx.Rngs` given at call time) with the keep-mask drawn
  by `fast_ops.dropout_keep_mask`, a counter-based hash, in place of `jax.random.bernoulli`'s
  threefry bits (docs/speed.md), in programs for the CPU (`platform`, see
  `fast_ops.techniques`). Without `rngs` (evaluation, decoding) it is the identity."""

  def __init__(self, rate: float, *, broadcast_dims=(), platform: str = ''):
    super().__init__(rate, broadcast_dims=broadcast_dims)
    self.platform = platform  # the program's (see fast_ops.techniques)

  def __call__(self, inputs, *, rngs: nnx.Rngs | None = None):
    if rngs is None or self.rate == 0.0:
      return inputs
    shape = list(inputs.shape)
    for dim in self.broadcast_dims:
      shape[dim] = 1
    keep_mask = techniques(self.platform).dropout_keep_mask
    keep = keep_mask(rngs[self.rng_collection](), self.rate, tuple(shape))
    scale = jnp.asarray(1.0 / (1.0 - self.rate), inputs.dtype)
    return jnp.where(keep, inputs * scale, jnp.zeros_like(inputs))


# config.remat -> what a layer keeps for the backward pass (jax.checkpoint_policies)
REMAT_POLICIES = {
  'none': None,  # everything: no recomputation
  'full': jax.checkpoint_policies.nothing_saveable,  # only the layer's inputs; all recomputed
  # the outputs of the weight matmuls (no batch dimensions); attention scores, softmax,
  # norms and activations recomputed
  'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_call(remat: str, layer, *args, rngs=None, **static):
  """`layer(*args, rngs=rngs, **static)`; where `remat` (config.remat) is not 'none', under
  `nnx.remat` with that policy (REMAT_POLICIES): the backward pass recomputes what the policy
  does not save instead of holding it from the forward pass. static: Python values."""
  if remat == 'none':
    return layer(*args, rngs=rngs, **static)

  def call(layer, rngs, *args):
    return layer(*args, rngs=rngs, **static)

  return nnx.remat(call, policy=REMAT_POLICIES[remat])(layer, rngs, *args)


def token_embedding(vocab_size: int, dim: int, dtype, param_dtype, rngs):
  """A token embedding table [vocab, dim], initialised N(0, 1/dim) (read scaled by sqrt(dim))."""
  return nnx.Embed(
    vocab_size,
    dim,
    dtype=dtype,
    param_dtype=param_dtype,
    embedding_init=logical_init(nnx.initializers.normal(stddev=dim**-0.5), 'vocab', 'embed'),
    rngs=rngs,
  )


class TokenEnds(nnx.Module):
  """The ends every architecture shares: checked token ids in, logits out of the decoder's
  features through the target embedding (tied) or `logits_dense`."""

  config: Any
  target_embed: nnx.Embed
  logits_dense: Any
  matmul_dtype: Any

  def _check_tokens(self, name, tokens):
    if tokens.ndim != 2:
      raise ValueError(f'{name} must be int token ids [batch, length], got shape {tokens.shape}.')
    if tokens.shape[1] > self.config.max_len:
      raise ValueError(
        f'{name} length {tokens.shape[1]} exceeds config.max_len={self.config.max_len}.'
      )

  @property
  def platform(self) -> str:
    """The platform the model's programs are built for (fast_ops.techniques)."""
    return self.config.platform

  def output_projection(self):
    """(kernel [vocab, features], bias [vocab] or None) with logits = features · kernelᵀ + bias."""
    if self.logits_dense is not None:
      return self.logits_dense.kernel[...].T, self.logits_dense.bias[...]
    return self.target_embed.embedding[...], None

  def vocab_logits(self, features):
    """features [batch, len, d] -> logits [batch, len, vocab], accumulated in float32."""
    kernel, bias = self.output_projection()
    logits = matmul(
      'btd,vd->btv', features, kernel.astype(features.dtype), self.matmul_dtype, jnp.float32
    )
    return logits if bias is None else logits + bias.astype(jnp.float32)


def shift_right(targets, positions=None, bos_id: int = BOS_ID):
  """Decoder inputs for teacher forcing: BOS, then the targets shifted one step right.

  With packed rows (positions given) every example starts with BOS at its position 0.
  """
  shifted = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  starts = (jnp.arange(targets.shape[1]) == 0)[None, :] if positions is None else positions == 0
  return jnp.where(starts, bos_id, shifted)


def count_params(model) -> int:
  """Number of trainable parameters."""
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
