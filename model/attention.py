"""Scaled dot-product attention and multi-head attention, as the textbook defines them.

    Attention(Q, K, V) = softmax(Q Kᵀ / sqrt(d_k) + mask) V

Layout throughout: [batch, length, heads, head_dim] for Q, K, V ("BTNH", the layout of
`jax.nn.dot_product_attention`); masks are boolean [batch, heads|1, q_len, kv_len], True where a
query may attend to a key, or an `AttentionMask`: the same given by segment ids and causality,
which the model builds and fused kernels take without the array.
"""

import functools
import math
import sys
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from model.common import logical_param
from model.fast_ops import matmul, platform_of, techniques

KERNELS = ('einsum', 'jax')
# cuDNN's fused (flash) attention takes these input dtypes and head sizes (a multiple of 8, at
# most 128; 256 on Hopper and later, which JAX checks itself when it traces the call)
FUSED_DTYPES = ('bfloat16', 'float16')
FUSED_MAX_HEAD_DIM = 256
CUDNN_REFUSALS = (NotImplementedError, RuntimeError, ValueError)  # raised by JAX's cuDNN checks


def rotary_embedding(x, positions, base: float = 10000.0):
  """Rotary position embedding (RoPE, Su et al. 2021, "RoFormer"), the half-split layout.

  x: [batch, length, heads, head_dim] queries or keys (head_dim even); positions: int
  [batch or 1, length]. Feature pair (x_i, x_{i + head_dim/2}) of a token at position p is
  rotated by the angle p * base^(-2i / head_dim). A rotated query and key then score
  q_m · k_n as a function of their offset n - m only, so attention sees relative positions.
  """
  half = x.shape[-1] // 2
  if 2 * half != x.shape[-1]:
    raise ValueError(f'rotary embedding needs an even head_dim, got {x.shape[-1]}.')
  inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = jnp.asarray(positions, jnp.float32)[:, :, None, None] * inv_freq  # [b, t, 1, half]
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


# ----------------------------------------------------------------------------- masks


def make_attention_mask(query_valid, key_valid):
  """[batch, q_len] x [batch, kv_len] booleans -> [batch, 1, q_len, kv_len] mask (both valid)."""
  return query_valid[:, None, :, None] & key_valid[:, None, None, :]


def make_padding_mask(query_tokens, key_tokens, pad_id: int = 0):
  """Mask that lets real (non-pad) queries attend to real keys: [batch, 1, q_len, kv_len]."""
  return make_attention_mask(query_tokens != pad_id, key_tokens != pad_id)


def make_causal_mask(length: int):
  """Lower-triangular mask, position i attends to positions <= i: [1, 1, length, length]."""
  positions = jnp.arange(length)
  return (positions[:, None] >= positions[None, :])[None, None]


def make_segment_mask(query_segments, key_segments):
  """Packed sequences: a token attends only within its own example (same segment id).

  Segment ids are [batch, len] ints, 0 for padding; returns [batch, 1, q_len, kv_len].
  """
  same = query_segments[:, None, :, None] == key_segments[:, None, None, :]
  return same & (query_segments != 0)[:, None, :, None]


def combine_masks(*masks):
  """Logical AND of the masks that are not None (broadcasting); None if all are None."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  out = masks[0]
  for m in masks[1:]:
    out = jnp.logical_and(out, m)
  return out


@struct.dataclass
class AttentionMask:
  """A mask given by its structure, segment ids and causality, rather than as an array: query
  i may attend to key j when both are in the same segment and, if `causal`, j <= i.

  query_segments: int [batch, q_len], or None: every query real, in one segment.
  key_segments: int [batch or 1, kv_len]. Segment ids number the examples of a packed row 1, 2,
    ... from the left, each contiguous, with 0 for padding. A row of one example has 1 for each
    real token, with the real tokens first.
  packed: rows may hold several examples.
  `dense()` is the boolean [batch, 1, q_len, kv_len] array. The jax kernel passes the structure
  on instead where `jax.nn.dot_product_attention` takes it: `is_causal` and sequence lengths
  (cuDNN's padding masks, which let it skip what is masked); packed rows give it `is_causal` and
  the segment mask.
  """

  query_segments: Any
  key_segments: Any
  causal: bool = struct.field(pytree_node=False, default=False)
  packed: bool = struct.field(pytree_node=False, default=False)

  @classmethod
  def padding(cls, query_valid, key_valid, causal: bool = False):
    """Rows of one example each; query_valid [batch, q_len] or None, key_valid [batch or 1,
    kv_len]: booleans, True for real tokens."""
    ids = lambda valid: None if valid is None else jnp.asarray(valid, jnp.int32)
    return cls(ids(query_valid), ids(key_valid), causal=causal)

  @classmethod
  def segments(cls, query_segments, key_segments, causal: bool = False):
    """Packed rows: segment ids [batch, q_len] and [batch, kv_len] (0 = padding)."""
    return cls(query_segments, key_segments, causal=causal, packed=True)

  def dense(self):
    """The boolean mask [batch, 1, q_len or 1, kv_len]: True where a query may attend."""
    if self.causal and (
      self.query_segments is None or self.query_segments.shape[-1] != self.key_segments.shape[-1]
    ):
      raise ValueError('a causal AttentionMask needs query and key segments of one length.')
    if self.query_segments is None:
      mask = (self.key_segments != 0)[:, None, None, :]
    else:
      mask = make_segment_mask(self.query_segments, self.key_segments)
    if self.causal:
      mask = mask & make_causal_mask(mask.shape[-1])
    return mask


# ----------------------------------------------------------------------------- core kernel


def fused_attention_unsupported(query, backend: str | None = None) -> str:
  """'' where `jax.nn.dot_product_attention(implementation='cudnn')` may take queries like
  `query` [batch, len, heads, head_dim] on `backend` (default: JAX's), else why not, in words."""
  backend = platform_of(backend)
  if backend != 'cuda':
    return f'the program is for {backend}, not CUDA GPUs'
  dtype = jnp.dtype(query.dtype).name
  if dtype not in FUSED_DTYPES:
    return f'{dtype} inputs; cuDNN takes {" or ".join(FUSED_DTYPES)} (config.dtype)'
  head_dim = query.shape[-1]
  if head_dim % 8 or head_dim > FUSED_MAX_HEAD_DIM:
    return f'head size {head_dim}; cuDNN takes multiples of 8 up to {FUSED_MAX_HEAD_DIM}'
  return ''


@functools.cache
def _notice(message: str):
  """Print `message` to stderr once per process (at trace time, so once per compilation)."""
  print(message, file=sys.stderr)


def _mask_arguments(mask, batch: int) -> dict:
  """`jax.nn.dot_product_attention`'s mask arguments for `mask` (None, a boolean array or an
  AttentionMask): `is_causal` and sequence lengths for rows of one example, `is_causal` and the
  segment mask (cuDNN adds it as a bias) for packed rows, a given array as it is."""
  if not isinstance(mask, AttentionMask):
    return {} if mask is None else {'mask': mask}
  if mask.packed:
    segments = AttentionMask.segments(mask.query_segments, mask.key_segments)
    return {'mask': segments.dense(), 'is_causal': mask.causal}

  def lengths(segments):  # real tokens first: a row's length is its count of real tokens
    return jnp.broadcast_to(jnp.sum(segments != 0, axis=-1, dtype=jnp.int32), (batch,))

  q = mask.query_segments
  return {
    'is_causal': mask.causal,
    'query_seq_lengths': None if q is None else lengths(q),
    'key_value_seq_lengths': lengths(mask.key_segments),
  }


def _jax_attention(query, key, value, mask, platform=None):
  """`jax.nn.dot_product_attention` given the mask's structure: cuDNN's fused attention where
  the inputs qualify and cuDNN takes the call, else XLA's, with a one-line notice saying why."""
  arguments = _mask_arguments(mask, query.shape[0])
  why = fused_attention_unsupported(query, platform)
  if not why:
    try:
      return jax.nn.dot_product_attention(query, key, value, **arguments, implementation='cudnn')
    except CUDNN_REFUSALS as e:  # JAX's own checks of the call, at trace time
      why = (str(e).strip().splitlines() or [type(e).__name__])[0]
  _notice(f'attention_kernel=jax: XLA attention, not cuDNN ({why}).')
  return jax.nn.dot_product_attention(query, key, value, **arguments, implementation='xla')


def dot_product_attention(
  query,
  key,
  value,
  mask=None,
  *,
  kernel: str = 'einsum',
  dropout_rate: float = 0.0,
  dropout_rng=None,
  return_weights: bool = False,
  kv_heads_major: bool = False,
  platform: str | None = None,
):
  """softmax(Q Kᵀ / sqrt(d_k)) V over the keys, with masked keys getting exactly zero weight.

  Args:
    query: [batch, q_len, heads, d_k]; key: [batch, kv_len, heads, d_k];
    value: [batch, kv_len, heads, d_v].
    mask: boolean, broadcastable to [batch, heads, q_len, kv_len], True = may attend; or an
      `AttentionMask`, the same given by segment ids and causality.
    kernel: 'einsum' (this module's own path, the only one that can return weights or apply
      attention dropout) or 'jax' (`jax.nn.dot_product_attention`: cuDNN's fused attention on
      CUDA GPUs for bfloat16 or float16 inputs and head sizes it takes, else XLA's).
    dropout_rate, dropout_rng: dropout on the attention weights (training only).
    return_weights: also return the weights [batch, heads, q_len, kv_len] (float32).
    kv_heads_major: key and value are [batch, heads, kv_len, d] instead: the layout in which
      the score and value matmuls need no transposes. Incremental decoding keeps its key/value
      cache and the cross-attention keys/values this way, so that the decoding loop does not
      transpose them at every step.
    platform: the platform the program is built for (`fast_ops.techniques`; None: JAX's).

  The softmax runs in float32 whatever the input dtype. A query whose keys are all masked
  gets all-zero weights and a zero output, never NaN.
  """
  if kv_heads_major:
    _check_qkv(query, jnp.swapaxes(key, 1, 2), jnp.swapaxes(value, 1, 2))
  else:
    _check_qkv(query, key, value)
  if kernel not in KERNELS:
    raise ValueError(f'attention kernel={kernel!r} is unknown; use one of {KERNELS}.')
  structure = mask
  if isinstance(mask, AttentionMask):
    mask = mask.dense()
  # A query row with no key to attend to: its output is defined as zero.
  row_has_key = None if mask is None else jnp.any(mask, axis=-1)  # [b, h|1, q]
  use_einsum = (
    kernel == 'einsum' or return_weights or (dropout_rate > 0 and dropout_rng is not None)
  )
  if not use_einsum:
    if kv_heads_major:
      key, value = jnp.swapaxes(key, 1, 2), jnp.swapaxes(value, 1, 2)
    out = _jax_attention(query, key, value, structure, platform)
    if row_has_key is not None:  # `where`: cuDNN leaves rows outside every segment undefined
      out = jnp.where(jnp.swapaxes(row_has_key, 1, 2)[..., None], out, jnp.zeros_like(out))
    return out

  depth = query.shape[-1]
  # [batch, heads, q_len, kv_len]
  kv = 'bhkd' if kv_heads_major else 'bkhd'
  scores = jnp.einsum(
    f'bqhd,{kv}->bhqk', query, key, preferred_element_type=jnp.float32
  ) / math.sqrt(depth)
  ops = techniques(platform)
  weights = ops.masked_softmax(scores, mask)
  if dropout_rate > 0 and dropout_rng is not None:
    keep = ops.dropout_keep_mask(dropout_rng, dropout_rate, weights.shape)
    weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
  out = jnp.einsum(f'bhqk,{kv}->bqhd', weights.astype(value.dtype), value)
  return (out, weights) if return_weights else out


def additive_scores(query, keys, v):
  """Bahdanau et al. (2015)'s additive ("concat") score e_j = v · tanh(W q + U k_j).

  query: the projected queries W q [sources, rows, d]; keys: the projected keys U k_j
  [sources, src_len, d] (rows queries per source, e.g. its beams); v: [d]. Returns float32
  scores [sources, rows, src_len].
  """
  hidden = jnp.tanh(query[:, :, None, :] + keys[:, None, :, :])  # [n, rows, src_len, d]
  return jnp.einsum('nrsd,d->nrs', hidden, v, preferred_element_type=jnp.float32)


def dot_scores(query, keys):
  """Luong et al. (2015)'s dot score e_j = q · k_j, unscaled; their "general" score q · W_a k_j
  is this with keys W_a k_j. query [sources, rows, d], keys [sources, src_len, d] -> float32
  [sources, rows, src_len]."""
  return jnp.einsum('nrd,nsd->nrs', query, keys, preferred_element_type=jnp.float32)


def _check_qkv(query, key, value):
  for name, x in (('query', query), ('key', key), ('value', value)):
    if x.ndim != 4:
      raise ValueError(
        f'{name} must have rank 4 [batch, length, heads, head_dim], got shape {x.shape}.'
      )
  if not query.shape[0] == key.shape[0] == value.shape[0]:
    raise ValueError(
      f'batch sizes differ: query {query.shape}, key {key.shape}, value {value.shape}.'
    )
  if key.shape[1] != value.shape[1]:
    raise ValueError(f'key and value lengths differ: {key.shape} vs {value.shape}.')
  if query.shape[2:] != key.shape[2:] or query.shape[2] != value.shape[2]:
    raise ValueError(
      f'query {query.shape} and key {key.shape} must share heads and head_dim, '
      f'value {value.shape} the number of heads.'
    )


# ----------------------------------------------------------------------------- module


def _unit_length(x):
  """x / |x| over the last axis, in float32."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


class MultiHeadAttention(nnx.Module):
  """Multi-head attention: `num_heads` attention heads in parallel, each with its own Q, K, V
  projections (d_model -> head_dim), their outputs concatenated and projected back to d_model.

  Self-attention (`self_attention=True`) projects Q, K and V from one sequence with one fused
  kernel [d_model, 3, heads, head_dim]; cross-attention projects Q from the decoder and K, V from
  the encoder output (fused kernel [d_model, 2, heads, head_dim]). Each head's projection is the
  slice [:, ..., h, :] of these kernels. With `rotary`, self-attention rotates its queries and
  keys by their positions (`rotary_embedding`) before comparing them.

  With `qk_norm` > 0 (QKNorm, Henry et al. 2020, for low-resource translation): each head's
  query and key are scaled to unit L2 length and their dot product is multiplied by a learned
  scalar g (`qk_scale`, one per layer, initialised to `qk_norm`) in place of 1/sqrt(d_k), so a
  score is g cos(q, k): softmax(g Q̂ K̂ᵀ) V. The paper initialises g to log2(L² - L), L the
  97.5th percentile of the training lengths.
  """

  def __init__(
    self,
    d_model: int,
    num_heads: int,
    *,
    rngs: nnx.Rngs,
    head_dim: int | None = None,
    self_attention: bool = True,
    dropout_rate: float = 0.0,
    kernel: str = 'einsum',
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    matmul_dtype: Any = None,
    rotary: bool = False,
    qk_norm: float = 0.0,
    platform: str = '',
  ):
    if num_heads <= 0 or d_model <= 0:
      raise ValueError(f'num_heads={num_heads} and d_model={d_model} must be positive.')
    if head_dim is None:
      if d_model % num_heads:
        raise ValueError(f'd_model={d_model} is not divisible by num_heads={num_heads}.')
      head_dim = d_model // num_heads
    if kernel not in KERNELS:
      raise ValueError(f'attention kernel={kernel!r} is unknown; use one of {KERNELS}.')
    if rotary and (not self_attention or head_dim % 2):
      raise ValueError(
        f'rotary embedding applies to self-attention with an even head_dim, got '
        f'self_attention={self_attention}, head_dim={head_dim}.'
      )
    if qk_norm < 0:
      raise ValueError(f'qk_norm={qk_norm} must be >= 0 (0: off; else the initial scale g).')
    self.rotary = rotary
    self.num_heads, self.head_dim, self.d_model = num_heads, head_dim, d_model
    self.self_attention, self.dropout_rate, self.kernel = self_attention, dropout_rate, kernel
    self.dtype, self.matmul_dtype, self.platform = dtype, matmul_dtype, platform
    lecun = nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2, 3))

    def param(shape, initializer, *axes):
      return logical_param(initializer(rngs.params(), shape, param_dtype), *axes)

    if self_attention:
      self.qkv_kernel = param(
        (d_model, 3, num_heads, head_dim), lecun, 'embed', None, 'heads', 'kv'
      )
      self.qkv_bias = param((3, num_heads, head_dim), nnx.initializers.zeros, None, 'heads', 'kv')
    else:
      self.q_kernel = param(
        (d_model, num_heads, head_dim),
        nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2)),
        'embed',
        'heads',
        'kv',
      )
      self.q_bias = param((num_heads, head_dim), nnx.initializers.zeros, 'heads', 'kv')
      self.kv_kernel = param((d_model, 2, num_heads, head_dim), lecun, 'embed', None, 'heads', 'kv')
      self.kv_bias = param((2, num_heads, head_dim), nnx.initializers.zeros, None, 'heads', 'kv')
    self.out_kernel = param(
      (num_heads, head_dim, d_model),
      nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
      'heads',
      'kv',
      'embed',
    )
    self.out_bias = param((d_model,), nnx.initializers.zeros, 'embed')
    self.qk_scale = logical_param(jnp.asarray(qk_norm, param_dtype)) if qk_norm > 0 else None

  def _project(self, x, kernel, bias, spec):
    x = x.astype(self.dtype)
    return matmul(spec, x, kernel[...].astype(self.dtype), self.matmul_dtype) + bias[...].astype(
      self.dtype
    )

  def project_qkv(self, x, positions=None):
    """Self-attention Q, K, V, each [batch, len, heads, head_dim]; with `rotary`, Q and K rotated
    by `positions` [batch or 1, len] (None: 0, 1, ...)."""
    qkv = self._project(x, self.qkv_kernel, self.qkv_bias, 'btd,dinh->btinh')
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.rotary:
      if positions is None:
        positions = jnp.arange(x.shape[1])[None, :]
      q, k = rotary_embedding(q, positions), rotary_embedding(k, positions)
    return self._normalize_query(q), self._normalize_key(k), v

  def project_q(self, x):
    return self._normalize_query(self._project(x, self.q_kernel, self.q_bias, 'btd,dnh->btnh'))

  def _normalize_key(self, k):
    """With qk_norm: k / |k| over head_dim (in float32); else k unchanged."""
    return k if self.qk_scale is None else _unit_length(k).astype(k.dtype)

  def _normalize_query(self, q):
    """With qk_norm: g sqrt(d_k) q / |q|, so that the kernel's division by sqrt(d_k) leaves
    the score g cos(q, k) (the same for both kernels and the decoding cache)."""
    if self.qk_scale is None:
      return q
    scale = self.qk_scale[...].astype(jnp.float32) * math.sqrt(self.head_dim)
    return (_unit_length(q) * scale).astype(q.dtype)

  def project_kv(self, x, heads_major: bool = False):
    """Cross-attention K, V from the encoder output; computed once per source when decoding.

    [batch, len, heads, head_dim] each, or [batch, heads, len, head_dim] with heads_major.
    """
    bias = self.kv_bias[...][:, None]  # [2, 1, heads, head_dim]
    if heads_major:
      kv = self._project(x, self.kv_kernel, bias[:, :, :, None], 'btd,dinh->ibnth')
    else:
      kv = self._project(x, self.kv_kernel, bias[:, :, None], 'btd,dinh->ibtnh')
    return self._normalize_key(kv[0]), kv[1]

  def attend(self, q, k, v, mask, *, rngs=None, return_weights=False, kv_heads_major=False):
    """Attention over given projected Q, K, V, then the output projection to d_model; attention
    dropout draws its key from the `dropout` stream of `rngs` (None: no dropout)."""
    result = dot_product_attention(
      q,
      k,
      v,
      mask,
      kernel=self.kernel,
      dropout_rate=self.dropout_rate,
      dropout_rng=rngs.dropout() if rngs is not None and self.dropout_rate > 0 else None,
      return_weights=return_weights,
      kv_heads_major=kv_heads_major,
      platform=self.platform,
    )
    out, weights = result if return_weights else (result, None)
    out = matmul('btnh,nhd->btd', out, self.out_kernel[...].astype(self.dtype), self.matmul_dtype)
    out = out + self.out_bias[...].astype(self.dtype)
    return (out, weights) if return_weights else out

  def __call__(
    self,
    inputs_q,
    inputs_kv=None,
    mask=None,
    *,
    rngs=None,
    return_weights=False,
    positions=None,
  ):
    """inputs_q: [batch, q_len, d_model]; inputs_kv: [batch, kv_len, d_model] for cross-attention
    (None for self-attention); mask broadcastable to [batch, heads, q_len, kv_len] or an
    AttentionMask; positions (rotary self-attention): int [batch or 1, q_len], None for 0, 1, ...;
    rngs: an nnx.Rngs with a `dropout` stream for attention dropout (None: none)."""
    if inputs_q.ndim != 3 or inputs_q.shape[-1] != self.d_model:
      raise ValueError(f'inputs_q must be [batch, length, {self.d_model}], got {inputs_q.shape}.')
    if self.self_attention:
      if inputs_kv is not None:
        raise ValueError('this MultiHeadAttention is self-attention; do not pass inputs_kv.')
      q, k, v = self.project_qkv(inputs_q, positions)
    else:
      if inputs_kv is None:
        raise ValueError('cross-attention needs inputs_kv (the encoder output).')
      if inputs_kv.ndim != 3 or inputs_kv.shape[0] != inputs_q.shape[0]:
        raise ValueError(
          f'inputs_kv must be [batch={inputs_q.shape[0]}, length, d_model], got {inputs_kv.shape}.'
        )
      q = self.project_q(inputs_q)
      k, v = self.project_kv(inputs_kv)
    return self.attend(q, k, v, mask, rngs=rngs, return_weights=return_weights)

  def decode_step(self, x, cache, *, return_weights=False):
    """One incremental self-attention step with a key/value cache.

    x: [batch, 1, d_model], the new position's input. cache: dict with 'key' and 'value'
    [batch, heads, max_len, head_dim] (heads-major, see `dot_product_attention`) and 'index'
    (scalar int, the position being written). Returns (output [batch, 1, d_model], new
    cache[, weights]); the new position attends to cache positions 0..index.
    """
    index = cache['index']
    q, k, v = self.project_qkv(x, jnp.reshape(index, (1, 1)))

    def write(buffer, new):  # new: [batch, 1, heads, head_dim] -> position `index` of buffer
      return jax.lax.dynamic_update_slice_in_dim(
        buffer, jnp.swapaxes(new, 1, 2).astype(buffer.dtype), index, 2
      )

    key, value = write(cache['key'], k), write(cache['value'], v)
    max_len = key.shape[2]
    mask = AttentionMask.padding(None, (jnp.arange(max_len) <= index)[None, :])  # keys 0..index
    new_cache = {'key': key, 'value': value, 'index': index + 1}
    if return_weights:
      out, weights = self.attend(q, key, value, mask, return_weights=True, kv_heads_major=True)
      return out, new_cache, weights
    return self.attend(q, key, value, mask, kv_heads_major=True), new_cache

  def init_cache(self, batch_size: int, max_len: int, dtype=None):
    shape = (batch_size, self.num_heads, max_len, self.head_dim)
    dtype = dtype or self.dtype
    return {
      'key': jnp.zeros(shape, dtype),
      'value': jnp.zeros(shape, dtype),
      'index': jnp.array(0, jnp.int32),
    }
