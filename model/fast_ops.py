"""The model's speed techniques, each beside the plain formula it replaces.

The model files call these in place of the textbook operations; each function here computes
the same values (and gradients) as the `*_reference` function beside it, which is the formula
as written, and tests/test_fast_ops.py checks that they agree. Measured gains: docs/speed.md.

| technique | replaces |
|---|---|
| `resolve_matmul_dtype`, `matmul`: bfloat16 operands, float32 sums (where native) | `jnp.einsum` |
| `masked_softmax`: the softmax's VJP from its stored weights | autodiff of `jax.nn.softmax` |
| `layer_norm`: its VJP with row means as matrix-vector products | autodiff of the formula |
| `dropout_keep_mask`: a counter-based integer hash | `jax.random.bernoulli` (threefry) |
| `top_k`: exact two-stage top-k (block maxima first) | `jax.lax.top_k` over the vocabulary |

They were measured on XLA:CPU only, so a model runs them only in programs built for the CPU:
`techniques(platform)` gives the four functions a platform's program runs, the techniques for
'cpu' and the formulas they replace for 'cuda', 'rocm' and 'tpu', and `resolve_matmul_dtype`
takes the platform too. A test can so build the program of an accelerator on a CPU.
"""

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
MATMUL_DTYPES = (*DTYPES, 'auto')
# what a program may be built for ('': JAX's default backend; 'gpu' is JAX's name for CUDA)
PLATFORMS = ('', 'cpu', 'cuda', 'gpu', 'rocm', 'tpu')
# x86 CPU flags of a native bfloat16 matmul; without them XLA:CPU emulates it, slower than float32
BF16_CPU_FLAGS = frozenset({'avx512_bf16', 'amx_bf16'})


# ----------------------------------------------------------------------------- matmul precision


@functools.lru_cache
def cpu_flags(cpuinfo: str = '/proc/cpuinfo') -> frozenset:
  """The CPU's feature flags as Linux lists them (empty where that file does not exist)."""
  try:
    with open(cpuinfo) as f:
      for line in f:
        if line.startswith('flags'):
          return frozenset(line.split(':', 1)[1].split())
  except OSError:
    pass
  return frozenset()


def platform_of(platform: str | None = None) -> str:
  """The platform a program is built for: `platform` ('cpu', 'cuda', 'rocm', 'tpu'; 'gpu' is
  JAX's backend name for CUDA), or where it is '' or None, JAX's default backend."""
  platform = platform or jax.default_backend()
  return 'cuda' if platform == 'gpu' else platform


class Techniques(NamedTuple):
  """The operations a program runs in place of the formulas, for one platform."""

  masked_softmax: Callable
  layer_norm: Callable
  dropout_keep_mask: Callable
  top_k: Callable


def techniques(platform: str | None = None) -> Techniques:
  """The CPU techniques where `platform` (see `platform_of`) is the CPU, else the formulas."""
  if platform_of(platform) == 'cpu':
    return Techniques(masked_softmax, layer_norm, dropout_keep_mask, top_k)
  return Techniques(
    masked_softmax_reference, layer_norm_reference, dropout_keep_mask_reference, top_k_reference
  )


def resolve_matmul_dtype(name: str, backend: str | None = None, flags: set | None = None):
  """config.matmul_dtype -> a dtype. 'auto' is bfloat16 where matmuls run natively in it
  (GPUs, TPUs, x86 CPUs with AVX512-BF16 or AMX) and exact float32 elsewhere, where bfloat16 is
  emulated and slower (docs/speed.md). backend: the platform built for (see `platform_of`)."""
  if name != 'auto':
    return DTYPES[name]
  if platform_of(backend) != 'cpu':
    return jnp.bfloat16
  flags = cpu_flags() if flags is None else flags
  return jnp.bfloat16 if BF16_CPU_FLAGS & set(flags) else jnp.float32


def matmul(spec: str, x, w, matmul_dtype=None, out_dtype=None):
  """`jnp.einsum(spec, x, w)`; with `matmul_dtype` (e.g. bfloat16) a mixed-precision matmul.

  Mixed precision rounds both operands to `matmul_dtype` and accumulates in float32, in the
  forward pass and in both backward matmuls (the incoming gradient is rounded too); the
  gradients keep the dtypes of x and w, the output theirs or `out_dtype`. TPUs run float32
  matmuls this way by default; on CPUs with AVX512-BF16 it runs about twice as fast as float32
  (docs/speed.md). The spec must be a plain two-operand contraction: every index of x (of w)
  appears in w (in x) or in the output, so that the gradients are einsums of the same kind.
  """
  if matmul_dtype is None or jnp.dtype(matmul_dtype) == jnp.result_type(x, w):
    return jnp.einsum(spec, x, w, preferred_element_type=out_dtype)
  out = _mixed_matmul(spec, jnp.dtype(matmul_dtype), x, w)
  return out if out_dtype is None else out.astype(out_dtype)


def _matmul_specs(spec):
  inputs, out = spec.replace(' ', '').split('->')
  x, w = inputs.split(',')
  if not (set(x) <= set(w + out) and set(w) <= set(x + out)):
    raise ValueError(
      f'matmul spec {spec!r} is not a plain contraction: an index of one operand '
      'must appear in the other operand or in the output.'
    )
  return x, w, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _mixed_matmul(spec, dtype, x, w):
  return _mixed_forward(spec, dtype, x, w)[0]


def _mixed_forward(spec, dtype, x, w):
  _matmul_specs(spec)
  xc, wc = x.astype(dtype), w.astype(dtype)
  out = jnp.einsum(spec, xc, wc, preferred_element_type=jnp.float32)
  dtypes = (jnp.zeros(0, x.dtype), jnp.zeros(0, w.dtype))  # x's and w's dtypes, for backward
  return out.astype(jnp.result_type(x, w)), (xc, wc) + dtypes


def _mixed_backward(spec, dtype, residuals, g):
  xc, wc, x_like, w_like = residuals
  x, w, out = _matmul_specs(spec)
  g = g.astype(dtype)
  dx = jnp.einsum(f'{out},{w}->{x}', g, wc, preferred_element_type=jnp.float32)
  dw = jnp.einsum(f'{x},{out}->{w}', xc, g, preferred_element_type=jnp.float32)
  return dx.astype(x_like.dtype), dw.astype(w_like.dtype)


_mixed_matmul.defvjp(_mixed_forward, _mixed_backward)


# ----------------------------------------------------------------------------- softmax


def masked_softmax_reference(scores, mask):
  """The formula: softmax over the last axis with masked entries at zero weight (autodiff)."""
  if mask is None:
    return jax.nn.softmax(scores, axis=-1)
  weights = jax.nn.softmax(jnp.where(mask, scores, jnp.finfo(scores.dtype).min), axis=-1)
  return jnp.where(mask, weights, 0.0)


@jax.custom_vjp
def masked_softmax(scores, mask):
  """softmax(scores) over the last axis, with exactly zero weight where `mask` (broadcastable to
  scores, or None) is False; a row with no True entry gets all-zero weights.

  Its gradient is the softmax's own, dscores = w * (dw - sum(dw * w)), from the stored weights
  w: a custom VJP, because autodiff of the softmax had XLA:CPU materialise a broadcast of the
  normaliser 1/sum(exp) for the backward pass (docs/speed.md).
  """
  return _masked_softmax_fwd(scores, mask)[0]


def _masked_softmax_fwd(scores, mask):
  if mask is not None:
    scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
  weights = jax.nn.softmax(scores, axis=-1)
  if mask is not None:
    # exp(min - max) underflows to 0 for masked keys; fully masked rows would be uniform.
    weights = jnp.where(mask, weights, 0.0)
  return weights, weights


def _masked_softmax_bwd(weights, g):
  return weights * (g - jnp.sum(g * weights, axis=-1, keepdims=True)), None


masked_softmax.defvjp(_masked_softmax_fwd, _masked_softmax_bwd)


# ----------------------------------------------------------------------------- layer norm


def layer_norm_reference(x, scale, bias, epsilon: float):
  """The formula, differentiated by autodiff."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) / jnp.sqrt(var + epsilon) * scale + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x, scale, bias, epsilon: float):
  """(x - mean) / sqrt(var + epsilon) * scale + bias over the last axis of x."""
  return _layer_norm_fwd(x, scale, bias, epsilon)[0]


def _layer_norm_fwd(x, scale, bias, epsilon):
  centred = x - jnp.mean(x, axis=-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + epsilon)
  normed = centred * rstd
  return normed * scale + bias, (normed, rstd, scale)


def _layer_norm_bwd(epsilon, residuals, g):
  """dx = rstd (g·scale - mean(g·scale) - x̂ mean(g·scale·x̂)), the two row means as
  matrix-vector products with `scale`; d scale = Σ g·x̂, d bias = Σ g over the other axes."""
  del epsilon
  normed, rstd, scale = residuals
  dim = normed.shape[-1]
  g_normed = g * normed
  mean_g = jnp.dot(g, scale)[..., None] / dim
  mean_g_normed = jnp.dot(g_normed, scale)[..., None] / dim
  dx = rstd * (g * scale - mean_g - normed * mean_g_normed)
  rows = tuple(range(g.ndim - 1))
  return dx, jnp.sum(g_normed, axis=rows), jnp.sum(g, axis=rows)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


# ----------------------------------------------------------------------------- dropout masks


def dropout_keep_mask_reference(rng, rate: float, shape):
  """JAX's own Bernoulli keep-mask (threefry bits per element)."""
  return jax.random.bernoulli(rng, 1.0 - rate, shape)


def dropout_keep_mask(rng, rate: float, shape):
  """Boolean keep-mask with P(keep) = 1 - rate (to 2⁻³²), from a counter-based hash.

  The key gives two 32-bit seeds (one threefry call); each element's counter (its flat index)
  goes through two rounds of the `lowbias32` integer hash (C. Wellons), keyed by the seeds, and
  is kept when the result is >= rate · 2³². This is a few integer ops per element where
  `jax.random.bernoulli` runs 20 threefry rounds, which made dropout a fifth of a CPU training
  step. The masks pass the tests in tests/test_attention.py (keep rate, independence of
  neighbours and of keys); use `jax.random` masks where cryptographic-grade randomness matters.
  """
  seeds = jax.random.bits(rng, (2,), jnp.uint32)
  size = math.prod(shape)
  counter = jax.lax.iota(jnp.uint32, size).reshape(shape)
  bits = _lowbias32(_lowbias32(counter ^ seeds[0]) ^ seeds[1])
  threshold = min(int(round(rate * 2.0**32)), 2**32 - 1)
  return bits >= jnp.uint32(threshold)


def _lowbias32(x):
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


# ----------------------------------------------------------------------------- top-k


def top_k_reference(x, k: int):
  """XLA's TopK over the whole last axis."""
  return jax.lax.top_k(x, k)


def top_k(x, k: int, block: int = 50):
  """jax.lax.top_k over the last axis (same values, indices and tie order), in two stages.

  XLA:CPU's TopK is a scalar partial sort per row; over a beam's whole vocabulary it was the
  costliest op of a beam-search step. Here: the maximum of each block of `block` entries (a
  vectorised reduction), the k best blocks, then top_k over just their k x block entries. Exact:
  an entry of the top k lies in one of the k blocks with the largest maxima (a block passed over
  has k others whose maxima are at least as large and, on ties, come first), and the chosen
  blocks are taken in index order, so ties still go to the lower index.
  """
  v = x.shape[-1]
  num_blocks = -(-v // block)
  if num_blocks <= k:
    return jax.lax.top_k(x, k)
  if num_blocks * block != v:
    x = jnp.pad(
      x, [(0, 0)] * (x.ndim - 1) + [(0, num_blocks * block - v)], constant_values=-jnp.inf
    )
  blocks = x.reshape(*x.shape[:-1], num_blocks, block)
  _, best = jax.lax.top_k(jnp.max(blocks, axis=-1), k)
  best = jnp.sort(best, axis=-1)  # index order: ties among candidates go to the lower index
  candidates = jnp.take_along_axis(blocks, best[..., None], axis=-2, mode='clip')
  values, pos = jax.lax.top_k(candidates.reshape(*x.shape[:-1], k * block), k)
  return values, jnp.take_along_axis(best, pos // block, axis=-1, mode='clip') * block + pos % block
