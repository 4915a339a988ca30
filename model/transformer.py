"""The encoder-decoder Transformer of Vaswani et al. (2017) on top of `model.attention`.

Pre-LN by default (more stable for small data and short schedules), post-LN as in the paper via
`config.layer_norm='post'`. Token ids: 0 is padding. Sequences may be packed: several examples
per row, told apart by segment ids (0 = padding) with positions restarting at 0 per example.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model.attention import KERNELS, AttentionMask, MultiHeadAttention
from model.common import (
  REMAT_POLICIES,
  Dropout,
  ModelConfig,
  TokenEnds,
  logical_linear,
  logical_param,
  remat_call,
  token_embedding,
)
from model.fast_ops import (
  DTYPES,
  MATMUL_DTYPES,
  PLATFORMS,
  matmul,
  resolve_matmul_dtype,
  techniques,
)

# sinusoidal and learned are added to the embeddings; rope rotates self-attention's Q and K
POSITION_TYPES = ('sinusoidal', 'learned', 'rope')
LAYER_NORM_TYPES = ('pre', 'post')
# the MLP's nonlinearity; the 'glu' names are gated linear units (Shazeer 2020, "GLU Variants
# Improve Transformer"): act(x W_gate) * (x W_in), one more d x mlp_dim matrix
ACTIVATIONS = {
  'relu': jax.nn.relu,  # Vaswani et al. 2017
  'gelu': lambda x: jax.nn.gelu(x, approximate=False),  # Hendrycks and Gimpel 2016 (erf)
  'silu': jax.nn.silu,  # x * sigmoid(x), a.k.a. swish
  'geglu': lambda x: jax.nn.gelu(x, approximate=False),
  'swiglu': jax.nn.silu,
}
GATED_ACTIVATIONS = frozenset({'geglu', 'swiglu'})  # one more d x mlp_dim matrix


# ----------------------------------------------------------------------------- helpers


def sinusoidal_positions(max_len: int, dim: int):
  """The paper's encoding: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)."""
  positions = np.arange(max_len)[:, None]
  div = np.exp(np.arange(0, dim, 2) * -(math.log(10000.0) / dim))
  table = np.zeros((max_len, dim), np.float32)
  table[:, 0::2] = np.sin(positions * div)
  table[:, 1::2] = np.cos(positions * div[: dim // 2])
  return jnp.asarray(table)


def pointer_generator_log_probs(logits, gate_logit, attention, source_ids):
  """log P(w) of the pointer-generator mixture (See et al. 2017, "Get To The Point"):

      P(w) = p_gen · softmax(logits)(w) + (1 - p_gen) · Σ_{s: source_s = w} attention_s,
      p_gen = sigmoid(gate_logit)

  logits [..., T, V]; gate_logit [..., T]; attention [..., T, S] (each row sums to 1 over the
  real source tokens); source_ids [..., S] int, in the same vocabulary as the targets (the
  joint SentencePiece model). Returns float32 [..., T, V], log-probabilities that are finite
  everywhere (the generator gives every token some mass) and a valid `logits` for anything
  that takes a softmax of them. Gradients stay finite where no source token is w; an attention
  entry whose vocabulary id gets exactly zero copy mass (padding, whose weight the masked
  softmax fixes at 0) gets zero gradient, which the masked softmax would zero anyway.
  """
  logits, attention = logits.astype(jnp.float32), attention.astype(jnp.float32)
  gate_logit = gate_logit.astype(jnp.float32)[..., None]
  vocab = logits.shape[-1]
  lead, (length, src_len) = attention.shape[:-2], attention.shape[-2:]
  # Scatter-add each target position's attention onto the vocabulary ids of the source.
  att = attention.reshape(-1, length, src_len)
  ids = jnp.broadcast_to(source_ids, lead + (src_len,)).reshape(-1, src_len)
  copy = jax.vmap(lambda a, i: jnp.zeros((length, vocab), jnp.float32).at[:, i].add(a))(att, ids)
  copy = copy.reshape(lead + (length, vocab))
  has_copy = copy > 0
  log_copy = jnp.where(has_copy, jnp.log(jnp.where(has_copy, copy, 1.0)), -jnp.inf)
  return jnp.logaddexp(
    jax.nn.log_sigmoid(gate_logit) + jax.nn.log_softmax(logits, axis=-1),
    jax.nn.log_sigmoid(-gate_logit) + log_copy,
  )


@dataclasses.dataclass(frozen=True)
class TransformerConfig(ModelConfig):
  """What `EncoderDecoder` is built from: its shape and its numerics, nothing of training.

  Built once from an experiment's ConfigDict (`from_config`), whose fields of the same names
  are documented in configs/default.py; a value that cannot build a model raises ValueError
  naming the field.
  """

  vocab_size: int
  emb_dim: int  # d_model
  num_heads: int
  num_encoder_layers: int
  num_decoder_layers: int
  mlp_dim: int
  max_len: int  # positions the model supports
  activation: str = 'relu'  # one of ACTIVATIONS
  dropout_rate: float = 0.1  # residual, embedding and MLP dropout
  attention_dropout_rate: float = 0.0
  source_word_dropout: float = 0.0
  layer_norm: str = 'pre'  # pre | post
  position_embedding: str = 'sinusoidal'  # one of POSITION_TYPES
  qk_norm: float = 0.0  # > 0: QKNorm with this initial scale; 0: QK^T / sqrt(d_k)
  share_embeddings: bool = True
  tie_output_embedding: bool = True
  copy_attention: bool = False  # pointer-generator
  attention_kernel: str = 'einsum'
  remat: str = 'none'  # one of REMAT_POLICIES: what each layer recomputes in the backward pass
  dtype: str = 'float32'  # activations
  param_dtype: str = 'float32'
  matmul_dtype: str = 'auto'  # one of MATMUL_DTYPES; see resolve_matmul_dtype
  platform: str = ''  # the program's: '' JAX's default backend, or cpu | cuda | rocm | tpu

  def __post_init__(self):
    self.check_fields(
      positive=(
        'vocab_size',
        'emb_dim',
        'num_heads',
        'num_encoder_layers',
        'num_decoder_layers',
        'mlp_dim',
        'max_len',
      ),
      choices=(
        ('attention_kernel', KERNELS),
        ('position_embedding', POSITION_TYPES),
        ('layer_norm', LAYER_NORM_TYPES),
        ('dtype', tuple(DTYPES)),
        ('activation', tuple(ACTIVATIONS)),
        ('param_dtype', tuple(DTYPES)),
        ('matmul_dtype', MATMUL_DTYPES),
        ('platform', PLATFORMS),
        ('remat', tuple(REMAT_POLICIES)),
      ),
      rates=('dropout_rate', 'attention_dropout_rate', 'source_word_dropout'),
      flags=('share_embeddings', 'tie_output_embedding', 'copy_attention'),
    )
    if self.emb_dim % self.num_heads:
      self.fail('num_heads', f'must divide config.emb_dim={self.emb_dim}.')
    if self.position_embedding == 'rope' and (self.emb_dim // self.num_heads) % 2:
      self.fail(
        'position_embedding',
        f'needs an even head dimension; emb_dim / num_heads = {self.emb_dim // self.num_heads}.',
      )
    if not self.qk_norm >= 0:
      self.fail('qk_norm', 'must be >= 0 (0: off; else the initial attention scale g, e.g. 10).')
    if self.copy_attention and self.attention_dropout_rate:
      self.fail(
        'attention_dropout_rate',
        'must be 0 with copy_attention (the copy distribution is '
        'the attention weights, which attention dropout would unnormalise).',
      )


# ----------------------------------------------------------------------------- layers


class MlpBlock(nnx.Module):
  """Position-wise feed-forward network: Linear(d -> mlp_dim), activation, dropout,
  Linear(-> d); a gated activation ('geglu', 'swiglu') multiplies act(x W_gate) into x W_in."""

  def __init__(
    self,
    dim: int,
    mlp_dim: int,
    dropout_rate: float,
    *,
    rngs: nnx.Rngs,
    dtype: Any,
    param_dtype: Any,
    matmul_dtype: Any = None,
    activation: str = 'relu',
    platform: str = '',
  ):
    self.dtype, self.matmul_dtype, self.activation = dtype, matmul_dtype, activation
    self.dropout = Dropout(dropout_rate, platform=platform)
    self.wi = logical_linear(dim, mlp_dim, ('embed', 'mlp'), dtype, param_dtype, rngs)
    self.wo = logical_linear(mlp_dim, dim, ('mlp', 'embed'), dtype, param_dtype, rngs)
    self.wi_gate = (
      logical_linear(dim, mlp_dim, ('embed', 'mlp'), dtype, param_dtype, rngs)
      if activation in GATED_ACTIVATIONS
      else None
    )

  def _dense(self, layer, x):  # layer(x), its matmul in matmul_dtype
    kernel, bias = layer.kernel[...].astype(self.dtype), layer.bias[...].astype(self.dtype)
    return matmul('...i,io->...o', x.astype(self.dtype), kernel, self.matmul_dtype) + bias

  def __call__(self, x, *, rngs=None):
    act = ACTIVATIONS[self.activation]
    if self.wi_gate is None:
      hidden = act(self._dense(self.wi, x))
    else:
      hidden = act(self._dense(self.wi_gate, x)) * self._dense(self.wi, x)
    return self._dense(self.wo, self.dropout(hidden, rngs=rngs))


class _Sublayers(nnx.Module):
  """Shared residual wiring: pre-LN  x + drop(f(LN(x)))  or post-LN  LN(x + drop(f(x))).

  A layer reads a sublayer's input with `sublayer_input(x, norm)` and adds its output back with
  `residual(x, f_out, norm)`."""

  pre_ln: bool
  dropout: Dropout

  def sublayer_input(self, x, norm):
    return norm(x) if self.pre_ln else x

  def residual(self, x, out, norm, rngs):
    x = x + self.dropout(out, rngs=rngs)
    return x if self.pre_ln else norm(x)


class LayerNorm(nnx.Module):
  """Layer normalisation (Ba et al. 2016) over the last axis: (x - mean) / sqrt(var + eps) *
  scale + bias, statistics and arithmetic in float32, the output in `dtype`.

  The same parameters (`scale`, `bias`) and values as `nnx.LayerNorm`, with a hand-written
  backward pass (`layer_norm`): autodiff of nnx.LayerNorm had XLA:CPU materialise a broadcast of
  `scale` for every normalisation's backward reductions (docs/speed.md).
  """

  def __init__(
    self,
    dim: int,
    *,
    rngs: nnx.Rngs,
    epsilon: float = 1e-6,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    platform: str = '',
  ):
    # ones and zeros; the two keys are drawn as nnx.LayerNorm draws them, so that a seed gives
    # every other layer the initial values it has in a model built with nnx.LayerNorm
    self.scale = logical_param(nnx.initializers.ones(rngs.params(), (dim,), param_dtype), 'embed')
    self.bias = logical_param(nnx.initializers.zeros(rngs.params(), (dim,), param_dtype), 'embed')
    self.epsilon, self.dtype, self.platform = epsilon, dtype, platform

  def __call__(self, x):
    f32 = jnp.float32
    y = techniques(self.platform).layer_norm(
      x.astype(f32), self.scale[...].astype(f32), self.bias[...].astype(f32), self.epsilon
    )
    return y.astype(self.dtype)


def _norm(dim, config, rngs):
  return LayerNorm(
    dim,
    epsilon=1e-6,
    dtype=DTYPES[config.dtype],
    param_dtype=DTYPES[config.param_dtype],
    platform=config.platform,
    rngs=rngs,
  )


def _attention(config, rngs, self_attention):
  return MultiHeadAttention(
    config.emb_dim,
    config.num_heads,
    rngs=rngs,
    self_attention=self_attention,
    dropout_rate=config.attention_dropout_rate,
    kernel=config.attention_kernel,
    dtype=DTYPES[config.dtype],
    param_dtype=DTYPES[config.param_dtype],
    matmul_dtype=resolve_matmul_dtype(config.matmul_dtype, config.platform),
    rotary=self_attention and config.position_embedding == 'rope',
    qk_norm=config.qk_norm,
    platform=config.platform,
  )


def _mlp(config, rngs):
  return MlpBlock(
    config.emb_dim,
    config.mlp_dim,
    config.dropout_rate,
    rngs=rngs,
    dtype=DTYPES[config.dtype],
    param_dtype=DTYPES[config.param_dtype],
    matmul_dtype=resolve_matmul_dtype(config.matmul_dtype, config.platform),
    activation=config.activation,
    platform=config.platform,
  )


class EncoderLayer(_Sublayers):
  """Self-attention over the source, then the MLP; each a residual sublayer."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.pre_ln = config.layer_norm == 'pre'
    self.dropout = Dropout(config.dropout_rate, platform=config.platform)
    self.self_attention = _attention(config, rngs, self_attention=True)
    self.mlp = _mlp(config, rngs)
    self.norm1, self.norm2 = (_norm(config.emb_dim, config, rngs) for _ in range(2))

  def __call__(self, x, mask, positions=None, *, rngs=None, return_weights=False):
    """x: [batch, len, d]; positions: the tokens' positions [batch or 1, len] for rotary
    self-attention; rngs: dropout's nnx.Rngs (None: none). Returns x, or (x, the attention
    weights [batch, heads, len, len]) with return_weights."""
    h = self.sublayer_input(x, self.norm1)
    out = self.self_attention(
      h, mask=mask, positions=positions, rngs=rngs, return_weights=return_weights
    )
    out, weights = out if return_weights else (out, None)
    x = self.residual(x, out, self.norm1, rngs)
    x = self.residual(x, self.mlp(self.sublayer_input(x, self.norm2), rngs=rngs), self.norm2, rngs)
    return (x, weights) if return_weights else x


class DecoderLayer(_Sublayers):
  """Causal self-attention, cross-attention to the encoder output, then the MLP."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.pre_ln = config.layer_norm == 'pre'
    self.dropout = Dropout(config.dropout_rate, platform=config.platform)
    self.self_attention = _attention(config, rngs, self_attention=True)
    self.cross_attention = _attention(config, rngs, self_attention=False)
    self.mlp = _mlp(config, rngs)
    self.norm1, self.norm2, self.norm3 = (_norm(config.emb_dim, config, rngs) for _ in range(3))

  def __call__(
    self,
    x,
    cross_kv,
    self_mask,
    cross_mask,
    positions=None,
    *,
    cache=None,
    rngs=None,
    return_weights=False,
  ):
    """x: [batch, tgt_len, d]; cross_kv: (K, V) projected from the encoder output; positions:
    [batch or 1, tgt_len] for rotary self-attention; rngs: dropout's nnx.Rngs (None: none).

    With `cache` (incremental decoding, tgt_len 1) self-attention reads and extends the cache,
    and cross_kv is heads-major (`EncoderDecoder.cross_kv(encoded, heads_major=True)`).
    Returns (x, the new cache or None, the cross-attention weights [batch, heads, tgt_len,
    src_len] with return_weights, else None).
    """
    h = self.sublayer_input(x, self.norm1)
    if cache is None:
      out = self.self_attention(h, mask=self_mask, positions=positions, rngs=rngs)
    else:
      out, cache = self.self_attention.decode_step(h, cache)
    x = self.residual(x, out, self.norm1, rngs)
    out, weights = self._cross_attend(
      self.sublayer_input(x, self.norm2),
      cross_kv,
      cross_mask,
      rngs,
      cache is not None,
      return_weights,
    )
    x = self.residual(x, out, self.norm2, rngs)
    x = self.residual(x, self.mlp(self.sublayer_input(x, self.norm3), rngs=rngs), self.norm3, rngs)
    return x, cache, weights

  def _cross_attend(self, h, cross_kv, mask, rngs, heads_major, return_weights):
    """Cross-attention of h [batch, length, d] to cross_kv -> (output, weights or None).

    Rows of h that are the `group` beams of one source (decoding with cross_kv computed per
    source, see `EncoderDecoder.decode_step`) attend as that source's group x length queries:
    one batched matmul per source over its own keys and values, not one per beam over copies.
    """
    q = self.cross_attention.project_q(h)
    batch, length = q.shape[:2]
    group = batch // cross_kv[0].shape[0]
    q = q.reshape(batch // group, group * length, *q.shape[2:])
    out = self.cross_attention.attend(
      q, *cross_kv, mask, rngs=rngs, return_weights=return_weights, kv_heads_major=heads_major
    )
    out, weights = out if return_weights else (out, None)
    if weights is not None:  # [sources, heads, group x length, src_len] -> [batch, heads, ...]
      w = weights.reshape(weights.shape[0], weights.shape[1], group, length, weights.shape[-1])
      weights = jnp.swapaxes(w, 1, 2).reshape(batch, w.shape[1], length, w.shape[-1])
    return out.reshape(batch, length, -1), weights


# ----------------------------------------------------------------------------- model


class EncoderDecoder(TokenEnds):
  """Transformer encoder-decoder. Call as model(inputs, targets) for teacher-forced logits.

  Token embeddings are shared between source and target when `config.share_embeddings`, and the
  target embedding doubles as the output projection when `config.tie_output_embedding` (the
  paper's weight tying); embeddings are scaled by sqrt(emb_dim).
  """

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    dim = config.emb_dim
    param_dtype, self.dtype = DTYPES[config.param_dtype], DTYPES[config.dtype]
    self.matmul_dtype = resolve_matmul_dtype(config.matmul_dtype, config.platform)

    def embedding():
      return token_embedding(config.vocab_size, dim, self.dtype, param_dtype, rngs)

    self.target_embed = embedding()
    self.source_embed = None if config.share_embeddings else embedding()
    if config.position_embedding == 'learned':
      self.position_table = logical_param(
        nnx.initializers.normal(0.02)(rngs.params(), (config.max_len, dim), param_dtype),
        None,
        'embed',
      )
    elif config.position_embedding == 'rope':
      self.position_table = None  # positions enter self-attention (rotary_embedding)
    else:
      self.position_table = nnx.Variable(sinusoidal_positions(config.max_len, dim))
    self.dropout = Dropout(config.dropout_rate, platform=config.platform)
    # word dropout: a token's whole embedding (the mask shared along the features)
    self.word_dropout = Dropout(
      config.source_word_dropout, broadcast_dims=(-1,), platform=config.platform
    )
    self.encoder_layers = nnx.List(
      [EncoderLayer(config, rngs=rngs) for _ in range(config.num_encoder_layers)]
    )
    self.decoder_layers = nnx.List(
      [DecoderLayer(config, rngs=rngs) for _ in range(config.num_decoder_layers)]
    )
    pre_ln = config.layer_norm == 'pre'
    self.encoder_norm = _norm(dim, config, rngs) if pre_ln else None
    self.decoder_norm = _norm(dim, config, rngs) if pre_ln else None
    self.logits_dense = (
      None
      if config.tie_output_embedding
      else logical_linear(dim, config.vocab_size, ('embed', 'vocab'), self.dtype, param_dtype, rngs)
    )
    # Copy attention: p_gen = sigmoid(w · decoder features + b) per target position.
    self.copy_gate = (
      logical_linear(dim, 1, ('embed', None), jnp.float32, param_dtype, rngs)
      if config.copy_attention
      else None
    )

  # -- embeddings

  def _embed(self, table, tokens, positions, rngs, source: bool = False):
    """Scaled token embeddings plus positions (not with rope, whose positions enter
    self-attention), then dropout. The source takes word dropout first (training): each
    token's embedding is dropped whole, before its position is added, and the kept ones
    rescaled (Gal and Ghahramani 2016's word dropout, per token as in Nematus)."""
    dim = self.config.emb_dim
    x = table(tokens) * jnp.asarray(math.sqrt(dim), self.dtype)
    if source:
      x = self.word_dropout(x, rngs=rngs)
    if self.position_table is not None:
      if positions is None:
        positions = jnp.arange(tokens.shape[1])[None, :]
      x = x + jnp.take(self.position_table[...], positions, axis=0).astype(self.dtype)
    return self.dropout(x, rngs=rngs)

  # -- encoder

  def encode(
    self,
    inputs,
    inputs_positions=None,
    inputs_segmentation=None,
    *,
    rngs=None,
    return_weights=False,
  ):
    """inputs: [batch, src_len] token ids -> [batch, src_len, emb_dim] (and per-layer weights);
    rngs: dropout's nnx.Rngs (None: no dropout)."""
    self._check_tokens('inputs', inputs)
    if inputs_segmentation is None:
      mask = AttentionMask.padding(inputs != 0, inputs != 0)
    else:
      mask = AttentionMask.segments(inputs_segmentation, inputs_segmentation)
    table = self.source_embed or self.target_embed
    x = self._embed(table, inputs, inputs_positions, rngs, source=True)
    weights = []
    for layer in self.encoder_layers:
      x = remat_call(
        self.config.remat,
        layer,
        x,
        mask,
        inputs_positions,
        rngs=rngs,
        return_weights=return_weights,
      )
      if return_weights:
        x, w = x
        weights.append(w)
    if self.encoder_norm is not None:
      x = self.encoder_norm(x)
    return (x, weights) if return_weights else x

  # -- decoder

  def cross_kv(self, encoded, heads_major: bool = False):
    """Each decoder layer's cross-attention K, V from the encoder output (once per source).

    heads_major: [batch, heads, src_len, head_dim] each, the layout `decode_step` takes.
    """
    return [layer.cross_attention.project_kv(encoded, heads_major) for layer in self.decoder_layers]

  def features(self, x):
    """Decoder output before the vocabulary projection (after the final norm when pre-LN)."""
    return x if self.decoder_norm is None else self.decoder_norm(x)

  def _logits(self, x):
    return self.vocab_logits(self.features(x))

  def _output(self, x, cross_weights, inputs):
    """Logits of the decoder output x; with copy attention, the log-probabilities of the
    pointer-generator mixture, its copy distribution the last layer's cross-attention weights
    averaged over heads (cross_weights: per layer [batch, heads, tgt_len, src_len])."""
    logits = self._logits(x)
    if self.copy_gate is None:
      return logits
    gate = self.copy_gate(self.features(x).astype(jnp.float32))[..., 0]
    return pointer_generator_log_probs(logits, gate, jnp.mean(cross_weights[-1], axis=1), inputs)

  def decode(
    self,
    encoded,
    inputs,
    decoder_inputs,
    *,
    targets_positions=None,
    inputs_segmentation=None,
    targets_segmentation=None,
    rngs=None,
    return_weights=False,
    return_features=False,
  ):
    """Teacher-forced decoding: logits [batch, tgt_len, vocab] (float32) for decoder_inputs.

    `inputs` (source token ids) supplies the source padding mask for cross-attention (and, with
    copy attention, the ids to copy; the "logits" are then the mixture's log-probabilities).
    With return_features, the [batch, tgt_len, emb_dim] features before the output projection
    (`output_projection()` maps them to logits) instead of the logits; not with copy attention.
    """
    if return_features and self.copy_gate is not None:
      raise ValueError(
        'return_features (the fused loss) does not apply to copy attention; '
        'use the logits path (config.loss_chunk_size=0).'
      )
    self._check_tokens('decoder_inputs', decoder_inputs)
    if encoded.shape[0] != decoder_inputs.shape[0] or encoded.shape[:2] != inputs.shape:
      raise ValueError(
        f'batch mismatch: encoded {encoded.shape}, inputs {inputs.shape}, '
        f'decoder_inputs {decoder_inputs.shape}.'
      )
    if targets_segmentation is None:
      valid = decoder_inputs != 0
      self_mask = AttentionMask.padding(valid, valid, causal=True)
      cross_mask = AttentionMask.padding(valid, inputs != 0)
    else:
      self_mask = AttentionMask.segments(targets_segmentation, targets_segmentation, causal=True)
      cross_mask = AttentionMask.segments(targets_segmentation, inputs_segmentation)
    x = self._embed(self.target_embed, decoder_inputs, targets_positions, rngs)
    keep_weights = return_weights or self.copy_gate is not None
    weights = []
    for layer, kv in zip(self.decoder_layers, self.cross_kv(encoded)):
      x, _, w = remat_call(
        self.config.remat,
        layer,
        x,
        kv,
        self_mask,
        cross_mask,
        targets_positions,
        rngs=rngs,
        return_weights=keep_weights,
      )
      weights.append(w)
    out = self.features(x) if return_features else self._output(x, weights, inputs)
    return (out, weights) if return_weights else out

  def __call__(
    self,
    inputs,
    decoder_inputs,
    *,
    inputs_positions=None,
    targets_positions=None,
    inputs_segmentation=None,
    targets_segmentation=None,
    rngs=None,
    return_features=False,
  ):
    """Teacher-forced logits [batch, tgt_len, vocab]; dropout only when `rngs` (an nnx.Rngs
    with a `dropout` stream) is given.

    return_features: the decoder features instead (see `decode`), for the fused loss.
    """
    if inputs.ndim != 2 or decoder_inputs.ndim != 2 or inputs.shape[0] != decoder_inputs.shape[0]:
      raise ValueError(
        f'inputs {inputs.shape} and decoder_inputs {decoder_inputs.shape} must be '
        f'[batch, length] with the same batch.'
      )
    encoded = self.encode(inputs, inputs_positions, inputs_segmentation, rngs=rngs)
    return self.decode(
      encoded,
      inputs,
      decoder_inputs,
      targets_positions=targets_positions,
      inputs_segmentation=inputs_segmentation,
      targets_segmentation=targets_segmentation,
      rngs=rngs,
      return_features=return_features,
    )

  # -- incremental decoding

  def init_cache(self, batch_size: int, max_len: int):
    """Empty self-attention key/value caches for `max_len` decoding steps, one per layer."""
    if max_len > self.config.max_len:
      raise ValueError(f'decode length {max_len} exceeds config.max_len={self.config.max_len}.')
    return [layer.self_attention.init_cache(batch_size, max_len) for layer in self.decoder_layers]

  def decode_step(self, tokens, cache, cross_kv, inputs):
    """One decoding step: tokens [batch] at position cache index -> logits [batch, vocab].

    cross_kv: from `cross_kv(encoded, heads_major=True)`, either per row or, for beam search,
    per source: of batch // group sources whose group beams are consecutive rows (rows
    i * group .. i * group + group - 1 decode source i), so that the beams read one copy of
    their source's keys and values. inputs: [batch, src_len] source token ids per row (0 =
    padding). Returns (logits float32, new cache); with copy attention the logits are the
    mixture's log-probabilities, as in `decode`.
    """
    index = cache[0]['index']
    x = self._embed(self.target_embed, tokens[:, None], jnp.reshape(index, (1, 1)), None)
    sources = cross_kv[0][0].shape[0]
    if tokens.shape[0] % sources:
      raise ValueError(
        f'{tokens.shape[0]} rows do not split into groups of beams of {sources} sources (cross_kv).'
      )
    cross_mask = AttentionMask.padding(None, inputs[:: tokens.shape[0] // sources] != 0)
    copy = self.copy_gate is not None
    weights, new_cache = [], []
    for layer, kv, layer_cache in zip(self.decoder_layers, cross_kv, cache):
      x, c, w = layer(x, kv, None, cross_mask, cache=layer_cache, return_weights=copy)
      new_cache.append(c)
      weights.append(w)
    return self._output(x, weights, inputs)[:, 0], new_cache
