r"""Training-step throughput on fixed shapes: tokens/s, GFLOP/s, MFU, compile time, peak RSS.

  .venv/bin/python benchmarks/train_step.py [--shape=tiny|small] [--steps=20] [--repeats=3]
  .venv/bin/python benchmarks/train_step.py --real_data   # default config's real pipeline
  .venv/bin/python benchmarks/train_step.py --real_data --architecture=rnn  # rnn_attention.py
  .venv/bin/python benchmarks/train_step.py --profile_ops=25  # also: where the step's time goes

Shapes (those of the reference figures in docs/speed.md): batch 128 pairs, source and target
length 32, vocab 10000, tied embeddings, dropout 0.1, Adam. MFU is against a jit-compiled
float32 2048x2048 matmul measured in the same process; with --override=matmul_dtype=bfloat16
(mixed precision) also against a bfloat16 one, the fair peak for it. Model FLOPs are analytic: 6
x non-embedding matmul params x tokens (source tokens for the encoder, target tokens for the
decoder), plus the logits matmul (6 x d x V per target token), plus attention scores and values
(2 matmuls x 2 x len x d per token per layer, x3 for backward). The rnn's: 6 x each cell's and
projection's matmul params x the tokens it reads, plus the logits and 2 x 2 x src_len x hidden
per target token for the scores and the context (x3 for backward).
"""

import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_enum('shape', 'tiny', ['tiny', 'small'], 'Model shape (the transformer).')
flags.DEFINE_enum(
  'architecture',
  'transformer',
  ['transformer', 'rnn'],
  'transformer: configs/default.py; rnn: configs/rnn_attention.py (its one size).',
)
flags.DEFINE_integer('steps', 20, 'Timed steps per repeat.')
flags.DEFINE_integer('repeats', 3, 'Repeats; the median is reported.')
flags.DEFINE_integer('batch', 128, 'Sentence pairs per batch.')
flags.DEFINE_integer('length', 32, 'Source and target length.')
flags.DEFINE_bool('real_data', False, 'Use the default config and its real input pipeline.')
flags.DEFINE_string('override', '', 'Comma-separated config overrides, e.g. dtype=bfloat16.')
flags.DEFINE_integer(
  'profile_ops',
  0,
  'N > 0: also trace --steps steps and print the N ops '
  'that take the most time (benchmarks/op_profile.py).',
)
FLAGS = flags.FLAGS

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import op_profile  # noqa: E402
from configs import default, rnn_attention  # noqa: E402
from core.parallel import global_batch, make_mesh  # noqa: E402
from model.fast_ops import resolve_matmul_dtype  # noqa: E402
from model.transformer import GATED_ACTIVATIONS  # noqa: E402
from training.data import load_data  # noqa: E402
from training.steps import create_training  # noqa: E402


def matmul_peak_gflops(n=2048, reps=10, dtype=jnp.float32):
  """GFLOP/s of a jit-compiled n x n matmul with `dtype` operands (float32 sums)."""
  x = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: jnp.dot(a, a, preferred_element_type=jnp.float32))
  f(x).block_until_ready()
  t = time.perf_counter()
  for _ in range(reps):
    y = f(x)
  y.block_until_ready()
  return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def rnn_flops_per_step(config, src_tokens, tgt_tokens, src_len):
  e, h, v = config.emb_dim, config.rnn_hidden_dim, config.vocab_size
  gates = {'gru': 3, 'lstm': 4}[config.rnn_cell]
  enc = sum(
    2 * gates * ((e if i == 0 else h) + h // 2) * (h // 2) for i in range(config.num_encoder_layers)
  )
  dec = sum(gates * ((2 * e if i == 0 else h) + h) * h for i in range(config.num_decoder_layers))
  keys = {'additive': h * h, 'general': h * h, 'dot': 0}[config.rnn_attention]
  query = h * h if config.rnn_attention == 'additive' else 0
  per_target = dec + query + 2 * h * e + e * v
  flops = 6 * (enc + keys) * src_tokens + 6 * per_target * tgt_tokens
  return flops + 3 * 2 * 2 * h * src_len * tgt_tokens


def model_flops_per_step(config, src_tokens, tgt_tokens, src_len, tgt_len):
  if config.architecture == 'rnn':
    return rnn_flops_per_step(config, src_tokens, tgt_tokens, src_len)
  d, f, v = config.emb_dim, config.mlp_dim, config.vocab_size
  attn_params = 4 * d * d
  mlp_params = (3 if config.activation in GATED_ACTIVATIONS else 2) * d * f
  enc = config.num_encoder_layers * (attn_params + mlp_params)
  dec = config.num_decoder_layers * (2 * attn_params + mlp_params)
  flops = 6 * enc * src_tokens + 6 * dec * tgt_tokens + 6 * d * v * tgt_tokens
  # attention scores (QKᵀ) and weighted values: 2 matmuls, 2 FLOPs per MAC, x3 fwd+bwd
  flops += (
    3
    * 2
    * 2
    * d
    * (
      config.num_encoder_layers * src_tokens * src_len
      + config.num_decoder_layers * tgt_tokens * (tgt_len + src_len)
    )
  )
  return flops


def synthetic_batches(batch, length, vocab, seed=0):
  rng = np.random.default_rng(seed)
  while True:
    b = {}
    for side in ('inputs', 'targets'):
      tokens = rng.integers(4, vocab, size=(batch, length), dtype=np.int32)
      tokens[:, -1] = 1
      b[side] = tokens
      b[f'{side}_position'] = np.tile(np.arange(length, dtype=np.int32), (batch, 1))
      b[f'{side}_segmentation'] = np.ones((batch, length), np.int32)
    yield b


def main(argv):
  del argv
  rnn = FLAGS.architecture == 'rnn'
  if FLAGS.real_data:
    config = rnn_attention.get_config() if rnn else default.get_config()
  else:
    config = rnn_attention.get_config() if rnn else default.get_config(FLAGS.shape)
    config.vocab_size = 10000
    config.dropout_rate = 0.1
    config.activation = 'relu'  # the baselines' MLP (the default tiny config's is swiglu)
    config.position_embedding = 'sinusoidal'  # the baselines' (the default tiny config's: rope)
    config.qk_norm = 0.0  # the baselines' scaled dot products (the default tiny: QKNorm)
    config.max_len = max(FLAGS.length, 64)
  for item in filter(None, FLAGS.override.split(',')):
    key, value = item.split('=')
    config[key] = (
      type(config[key])(value) if not isinstance(config[key], bool) else value.lower() == 'true'
    )
  if FLAGS.real_data:
    import tempfile  # pylint: disable=g-import-not-at-top

    workdir = tempfile.mkdtemp()
    batches, _, _ = load_data(config, workdir, print)
  else:
    batches = synthetic_batches(FLAGS.batch, FLAGS.length, config.vocab_size)

  training = create_training(config, make_mesh())
  state, step_fn, data_sharding = training.state, training.step_fn, training.data_sharding
  first = global_batch(next(batches), data_sharding)
  t = time.perf_counter()
  compiled = step_fn.lower(state, first, 0.0).compile()
  compile_s = time.perf_counter() - t
  state, _ = compiled(state, first, 0.0)
  jax.block_until_ready(state)

  peak = matmul_peak_gflops()
  results = []
  for _ in range(FLAGS.repeats):
    host = [next(batches) for _ in range(FLAGS.steps)]
    src = sum(int((b['inputs'] != 0).sum()) for b in host)
    tgt = sum(int((b['targets'] != 0).sum()) for b in host)
    flops = sum(
      model_flops_per_step(
        config,
        int((b['inputs'] != 0).sum()),
        int((b['targets'] != 0).sum()),
        b['inputs'].shape[1],
        b['targets'].shape[1],
      )
      for b in host
    )
    t = time.perf_counter()
    for b in host:
      state, metrics = compiled(state, global_batch(b, data_sharding), 0.0)
    jax.block_until_ready((state, metrics))
    dt = time.perf_counter() - t
    results.append((tgt / dt, (src + tgt) / dt, flops / dt / 1e9))
  tgt_s, all_s, gflops = (float(np.median([r[i] for r in results])) for i in range(3))
  rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
  label = (
    f'{"rnn_attention" if rnn else "default"} config, real data'
    if FLAGS.real_data
    else (f'{"rnn" if rnn else FLAGS.shape}: batch {FLAGS.batch} x length {FLAGS.length}')
  )
  matmul_dtype = jnp.dtype(resolve_matmul_dtype(config.matmul_dtype))
  print(
    f'== train step, {label}, {jax.device_count()} {jax.devices()[0].platform} device(s), '
    f'{os.cpu_count()} cores, matmul_dtype {config.matmul_dtype} ({matmul_dtype.name}), '
    f'overrides [{FLAGS.override}]'
  )
  print(
    f'target tokens/s          {tgt_s:,.0f}   (median of {FLAGS.repeats} x {FLAGS.steps} steps)'
  )
  print(f'source+target tokens/s   {all_s:,.0f}')
  print(f'model GFLOP/s            {gflops:.1f}')
  print(f'f32 matmul peak GFLOP/s  {peak:.1f}')
  print(f'MFU                      {100 * gflops / peak:.1f}%')
  if matmul_dtype != jnp.float32:
    low = matmul_peak_gflops(dtype=matmul_dtype)
    print(f'{matmul_dtype.name + " peak GFLOP/s":25s}{low:.1f}')
    print(f'MFU vs that peak         {100 * gflops / low:.1f}%')
  print(f'compile time             {compile_s:.1f} s')
  print(f'peak RSS                 {rss_gb:.2f} GB')
  if FLAGS.profile_ops:
    batch = global_batch(next(batches), data_sharding)
    box = [state]  # the step donates its state, so each call takes the previous call's result

    def step():
      box[0], step_metrics = compiled(box[0], batch, 0.0)
      return box[0], step_metrics

    times = op_profile.op_times(step, FLAGS.steps)
    op_profile.print_op_table(
      times, op_profile.op_sources(compiled.as_text()), FLAGS.steps, top=FLAGS.profile_ops
    )


if __name__ == '__main__':
  app.run(main)
