r"""The two attention kernels side by side: outputs and gradients, and time per call.

  .venv/bin/python benchmarks/attention_kernels.py [--batch=32 --length=512 --heads=8 \
      --head_dim=64 --dtype=bfloat16]

`attention_kernel=einsum` (the textbook path, on the dense mask) against `jax`
(`jax.nn.dot_product_attention` given the mask's structure: cuDNN's fused attention on a CUDA
GPU for bfloat16/float16 inputs, else XLA's, with a notice) on two causal self-attention masks:
padded rows of one example each (cuDNN: is_causal and sequence lengths) and packed rows of
examples 8 to 64 tokens long (cuDNN: is_causal and the segment mask as a bias).
It prints the largest output and gradient differences (bfloat16 tolerance is about 1e-2 of the
values' scale) and the median milliseconds of a jit-compiled forward and of a forward plus
backward pass.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_integer('batch', 32, 'Sequences.')
flags.DEFINE_integer('length', 512, 'Query and key length.')
flags.DEFINE_integer('heads', 8, 'Heads.')
flags.DEFINE_integer('head_dim', 64, 'Head size.')
flags.DEFINE_enum('dtype', 'bfloat16', ['bfloat16', 'float16', 'float32'], 'Input dtype.')
flags.DEFINE_integer('repeats', 20, 'Timed calls; the median is reported.')
FLAGS = flags.FLAGS

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from model.attention import AttentionMask, dot_product_attention, fused_attention_unsupported  # noqa: E402


def median_ms(fn, *args):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1000 * float(np.median(times))


def masks():
  """Padded rows (lengths from half to all of the row) and packed rows (the same, cut into
  examples of 8 to 64 tokens)."""
  lengths = np.linspace(FLAGS.length // 2, FLAGS.length, FLAGS.batch).astype(int)
  valid = np.arange(FLAGS.length)[None, :] < lengths[:, None]
  rng = np.random.default_rng(0)
  segments = np.zeros((FLAGS.batch, FLAGS.length), np.int32)
  for row, length in enumerate(lengths):
    cuts = np.cumsum(rng.integers(8, 65, size=FLAGS.length))
    segments[row, :length] = 1 + np.searchsorted(cuts, np.arange(length), side='right')
  return {
    'padded': AttentionMask.padding(jnp.asarray(valid), jnp.asarray(valid), causal=True),
    'packed': AttentionMask.segments(jnp.asarray(segments), jnp.asarray(segments), causal=True),
  }


def compare(name, mask, q, k, v):
  results = {}
  for kernel in ('einsum', 'jax'):
    forward = jax.jit(
      lambda q, k, v, kernel=kernel: dot_product_attention(q, k, v, mask, kernel=kernel)
    )
    loss = lambda q, k, v, f=forward: jnp.sum(f(q, k, v).astype(jnp.float32) ** 2)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    results[kernel] = (forward(q, k, v), grads(q, k, v))
    print(
      f'{name:7s} {kernel:7s} forward {median_ms(forward, q, k, v):8.2f} ms   '
      f'forward+backward {median_ms(grads, q, k, v):8.2f} ms'
    )
  (out_a, grads_a), (out_b, grads_b) = results['einsum'], results['jax']
  diff = jnp.max(jnp.abs(out_a.astype(jnp.float32) - out_b.astype(jnp.float32)))
  scale = float(jnp.max(jnp.abs(out_a)))
  print(f'{name:7s} max |output difference| {float(diff):.3e} (up to {scale:.2f})')
  for grad, a, b in zip('qkv', grads_a, grads_b):
    d, scale = jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))), jnp.max(jnp.abs(a))
    print(f'{name:7s} max |d{grad} difference|     {float(d):.3e} (up to {float(scale):.2f})')


def main(argv):
  del argv
  shape = (FLAGS.batch, FLAGS.length, FLAGS.heads, FLAGS.head_dim)
  keys = jax.random.split(jax.random.key(0), 3)
  q, k, v = (jax.random.normal(key, shape, FLAGS.dtype) for key in keys)
  why = fused_attention_unsupported(q)
  print(
    f'== attention kernels, {jax.devices()[0].device_kind}, inputs {shape} {FLAGS.dtype}; '
    f'jax kernel: {"cuDNN" if not why else "XLA (" + why + ")"}'
  )
  for name, mask in masks().items():
    compare(name, mask, q, k, v)


if __name__ == '__main__':
  app.run(main)
