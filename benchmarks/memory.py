r"""Compiled memory of the train step per device on a simulated 8-device CPU mesh.

  .venv/bin/python benchmarks/memory.py [--shapes=base,big] [--batch=64] [--length=64]

For each model shape and each mesh (pure data parallelism, fsdp=8, fsdp=4 x tensor=2), XLA's
memory analysis of the compiled, SPMD-partitioned train step: the bytes of its arguments (the
training state and a batch), outputs and temporaries on one device, and their sum less the
donated state (what one device needs). Nothing is allocated: the state is abstract
(create_training(abstract=True)). The batch is the global one, split over data x fsdp.
"""

import os
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_list('shapes', ['base', 'big'], 'Model shapes of configs/default.py.')
flags.DEFINE_list(
  'meshes', ['data:8', 'data:1,fsdp:8', 'data:1,fsdp:4,tensor:2'], 'Meshes (config.mesh).'
)
flags.DEFINE_integer('batch', 64, 'Rows per global batch (packed, of --length tokens).')
flags.DEFINE_integer('length', 64, 'Tokens per row (source and target).')
flags.DEFINE_integer('vocab', 32000, 'Vocabulary size.')
FLAGS = flags.FLAGS

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import default  # noqa: E402
from core.parallel import make_mesh  # noqa: E402
from training.steps import create_training  # noqa: E402


def gigabytes(n: int) -> str:
  return f'{n / 2**30:7.2f}'


def main(argv):
  del argv
  print(
    f'{jax.device_count()} simulated {jax.devices()[0].platform} devices; batch '
    f'{FLAGS.batch} x {FLAGS.length} tokens, vocabulary {FLAGS.vocab}; GiB per device'
  )
  print(
    f'{"shape":6s} {"mesh":24s} {"params":>9s} {"state":>7s} {"args":>7s} {"temp":>7s} '
    f'{"needs":>7s}'
  )
  for shape in FLAGS.shapes:
    for mesh_spec in FLAGS.meshes:
      config = default.get_config(shape)
      config.update(
        vocab_size=FLAGS.vocab,
        batch_size=FLAGS.batch,
        max_train_len=FLAGS.length,
        mesh=mesh_spec,
        matmul_dtype='float32',
      )
      training = create_training(config, make_mesh(mesh_spec), abstract=True)
      batch = {
        f'{side}{suffix}': jax.ShapeDtypeStruct(
          (FLAGS.batch, FLAGS.length), np.int32, sharding=training.train_sharding
        )
        for side in ('inputs', 'targets')
        for suffix in ('', '_position', '_segmentation')
      }
      time_position = jax.ShapeDtypeStruct((), np.float32, sharding=training.replicated)
      compiled = training.step_fn.lower(training.state, batch, time_position).compile()
      memory = compiled.memory_analysis()
      state_bytes = sum(
        int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
        for x in jax.tree.leaves(training.state)
      )
      params = jax.tree.leaves(training.state['params'])
      needs = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
      )
      print(
        f'{shape:6s} {mesh_spec:24s} {sum(p.size for p in params) / 1e6:8.1f}M '
        f'{gigabytes(state_bytes)} {gigabytes(memory.argument_size_in_bytes)} '
        f'{gigabytes(memory.temp_size_in_bytes)} {gigabytes(needs)}',
        flush=True,
      )


if __name__ == '__main__':
  app.run(main)
