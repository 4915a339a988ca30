r"""Input-pipeline throughput on Multi30k next to what the training step consumes.

  .venv/bin/python benchmarks/input_pipeline.py [--batches=300] [--train_steps=10]

Prints examples/s and tokens/s of the default config's training batches (tokenized, packed or
bucketed, as host arrays), the padding share, and the target tokens/s of the default model's
jit-compiled train step on the same batches, so the ratio shows the pipeline's headroom.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app, flags  # noqa: E402

flags.DEFINE_integer('batches', 300, 'Batches to time.')
flags.DEFINE_integer('train_steps', 10, 'Train steps to time (0 skips).')
flags.DEFINE_enum('batching', 'packed', ['packed', 'bucketed'], 'Batching mode.')
flags.DEFINE_integer('pack_window', None, "Packing window (default: the config's).")
FLAGS = flags.FLAGS

import jax  # noqa: E402

from configs import default  # noqa: E402
from core.parallel import global_batch, make_mesh  # noqa: E402
from training.data import load_data  # noqa: E402
from training.steps import create_training  # noqa: E402


def main(argv):
  del argv
  config = default.get_config()
  config.batching = FLAGS.batching
  if FLAGS.pack_window is not None:
    config.pack_window = FLAGS.pack_window
  start = time.perf_counter()
  train_iter, _, _ = load_data(config, tempfile.mkdtemp(), print)
  print(f'setup (load, train tokenizer, encode): {time.perf_counter() - start:.1f} s')

  start = time.perf_counter()
  examples = tokens = target_tokens = 0
  for _ in range(FLAGS.batches):
    batch = next(train_iter)
    examples += int(batch['targets_segmentation'].max(axis=1).sum())
    tokens += int((batch['inputs'] != 0).sum() + (batch['targets'] != 0).sum())
    target_tokens += int((batch['targets'] != 0).sum())
  seconds = time.perf_counter() - start
  pipeline_tgt = target_tokens / seconds
  print(
    f'== input pipeline, {config.dataset} {config.source_lang}->{config.target_lang}, '
    f'{config.batching}, {FLAGS.batches} batches, {os.cpu_count()} cores'
  )
  print(f'examples/s               {examples / seconds:,.0f}')
  print(f'tokens/s (src+tgt)       {tokens / seconds:,.0f}')
  print(f'target tokens/s          {pipeline_tgt:,.0f}')
  print(f'padding share            {100 * train_iter.padding_fraction:.1f}%')
  if not FLAGS.train_steps:
    return

  training = create_training(config, make_mesh())
  state, step_fn, data_sharding = training.state, training.step_fn, training.data_sharding
  batches = [next(train_iter) for _ in range(FLAGS.train_steps + 1)]
  state, metrics = step_fn(state, global_batch(batches[0], data_sharding), 0.0)
  jax.block_until_ready(state)
  start = time.perf_counter()
  consumed = 0
  for batch in batches[1:]:
    state, metrics = step_fn(state, global_batch(batch, data_sharding), 0.0)
    consumed += int((batch['targets'] != 0).sum())
  jax.block_until_ready((state, metrics))
  step_tgt = consumed / (time.perf_counter() - start)
  print(f'train step target tok/s  {step_tgt:,.0f}   (default model, {FLAGS.train_steps} steps)')
  print(f'pipeline / train step    {pipeline_tgt / step_tgt:,.0f}x')


if __name__ == '__main__':
  app.run(main)
