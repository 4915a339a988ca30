r"""Compiled memory of the train step per device on a simulated 8-device CPU mesh.

  .venv/bin/python benchmarks/memory.py [--shapes=base,big] [--batch=64] [--length=64] \
      [--remat=none,full,dots]

For each model shape, each mesh (pure data parallelism, fsdp=8, fsdp=4 x tensor=2) and each
config.remat (what each layer recomputes in the backward pass instead of storing), XLA's
memory analysis of the compiled, SPMD-partitioned train step: the bytes of its arguments (the
training state and a batch), outputs and temporaries on one device, and their sum less the
donated state (what one device needs). Nothing is allocated: the state is abstract
(create_training(abstract=True)). The batch is the global one, split over data x fsdp.

`kept` is what remat changes on any platform: the bytes the forward pass keeps for the backward
pass (jax.vjp's residuals, parameters included) for one device's rows of the batch, the model
whole (as on the data-parallel mesh). XLA:CPU's buffer assignment does not follow the
rematerialisation (its `temp` stays), so `kept` is the figure to read for remat; accelerator
compilers schedule by it.
"""

import os
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_list('shapes', ['base', 'big'], 'Model shapes of configs/default.py.')
flags.DEFINE_string(
  'meshes', 'data:8;data:1,fsdp:8;data:1,fsdp:4,tensor:2', 'Meshes (config.mesh), ;-separated.'
)
flags.DEFINE_list('remat', ['none'], 'config.remat values: none | full | dots.')
flags.DEFINE_integer('batch', 64, 'Rows per global batch (packed, of --length tokens).')
flags.DEFINE_integer('length', 64, 'Tokens per row (source and target).')
flags.DEFINE_integer('vocab', 32000, 'Vocabulary size.')
FLAGS = flags.FLAGS

import functools  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import default  # noqa: E402
from core.parallel import BATCH_AXES, make_mesh  # noqa: E402
from model.architectures import create_model  # noqa: E402
from training.steps import batch_loss, create_training  # noqa: E402


def gigabytes(n: int) -> str:
  return f'{n / 2**30:7.2f}'


def batch_spec(rows: int, sharding=None) -> dict:
  """An abstract packed batch of `rows` rows of --length tokens."""
  spec = jax.ShapeDtypeStruct((rows, FLAGS.length), np.int32, sharding=sharding)
  return {
    f'{side}{suffix}': spec
    for side in ('inputs', 'targets')
    for suffix in ('', '_position', '_segmentation')
  }


def kept_for_backward(config, rows: int) -> int:
  """Bytes of jax.vjp's residuals of the training loss over `rows` rows (traced, not run)."""
  graphdef, params, rest = create_model(config, 0)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  loss = functools.partial(
    batch_loss,
    graphdef=graphdef,
    rest=rest,
    label_smoothing=config.label_smoothing,
    loss_chunk_size=config.loss_chunk_size,
  )

  def residuals(params, batch):
    return jax.vjp(lambda p: loss(p, batch, jax.random.key(0))[0], params)[1]

  tree = jax.eval_shape(residuals, abstract, batch_spec(rows))
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def main(argv):
  del argv
  print(
    f'{jax.device_count()} simulated {jax.devices()[0].platform} devices; batch '
    f'{FLAGS.batch} x {FLAGS.length} tokens, vocabulary {FLAGS.vocab}; GiB per device'
  )
  print(
    f'{"shape":6s} {"mesh":24s} {"remat":6s} {"params":>9s} {"state":>7s} {"args":>7s} '
    f'{"temp":>7s} {"needs":>7s} {"kept":>7s}'
  )
  for shape, mesh_spec, remat in (
    (shape, mesh, remat)
    for shape in FLAGS.shapes
    for mesh in FLAGS.meshes.split(';')
    for remat in FLAGS.remat
  ):
    config = default.get_config(shape)
    config.update(
      vocab_size=FLAGS.vocab,
      batch_size=FLAGS.batch,
      max_train_len=FLAGS.length,
      mesh=mesh_spec,
      matmul_dtype='float32',
      remat=remat,
    )
    mesh = make_mesh(mesh_spec)
    training = create_training(config, mesh, abstract=True)
    batch = batch_spec(FLAGS.batch, training.train_sharding)
    rows = FLAGS.batch // int(np.prod([mesh.shape[axis] for axis in BATCH_AXES]))
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
      f'{shape:6s} {mesh_spec:24s} {remat:6s} {sum(p.size for p in params) / 1e6:8.1f}M '
      f'{gigabytes(state_bytes)} {gigabytes(memory.argument_size_in_bytes)} '
      f'{gigabytes(memory.temp_size_in_bytes)} {gigabytes(needs)} '
      f'{gigabytes(kept_for_backward(config, rows))}',
      flush=True,
    )


if __name__ == '__main__':
  app.run(main)
