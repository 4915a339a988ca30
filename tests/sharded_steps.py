"""Run by test_train.py in a subprocess with 8 simulated CPU devices: train steps of a tiny
model on each mesh named on the command line and on one device, and a checkpoint saved on one
mesh restored on others; prints the results as JSON."""

import json
import os
import sys
import tempfile

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.checkpoints import Checkpoints  # noqa: E402
from core.parallel import MESH_AXES, bytes_per_device, make_mesh, to_host  # noqa: E402
from training.steps import create_training  # noqa: E402

from helpers import random_batch, tiny_run_config  # noqa: E402

STEPS = 20


def held_by_devices(tree) -> tuple:
  """(the most bytes of `tree` that one device holds, read from the arrays' addressable shards,
  and what bytes_per_device says from their shardings)."""
  per_device = {}
  for x in jax.tree.leaves(tree):
    for shard in x.addressable_shards:
      per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
  return max(per_device.values()), *bytes_per_device(tree)


def one_device_mesh():
  return Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), MESH_AXES)


def train(config, mesh, steps=STEPS):
  """(training, state, losses) after `steps` steps on random batches of 16 rows."""
  training = create_training(config, mesh)
  state, losses = training.state, []
  for step in range(steps):
    batch = jax.device_put(random_batch(rows=16, seed=step), training.data_sharding)
    state, metrics = training.step_fn(state, batch, 0.0)
    losses.append(float(to_host(metrics['loss'])))
  return training, state, losses


def restored_params(config, mesh, workdir):
  """The parameters of the newest checkpoint in `workdir`, restored onto `mesh`."""
  training = create_training(config, mesh)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, training.state)
  state, _ = Checkpoints(workdir, keep=2).restore_latest(abstract)
  return state


def main(meshes):
  tmp = tempfile.mkdtemp()
  config = tiny_run_config(
    __import__('pathlib').Path(tmp), num_heads=4, dropout_rate=0.0, batch_size=16
  )
  results = {'one': train(config, one_device_mesh())[2]}
  for spec in meshes:
    training, state, losses = train(config, make_mesh(spec))
    results[spec] = {
      'losses': losses,
      'params': held_by_devices(state['params']),
      'opt_state': held_by_devices(state['opt_state']),
    }
  # a checkpoint saved with fsdp over 8 devices restores on one device, and back on (2, 2, 2)
  fsdp = 'data:1,fsdp:8,tensor:1'
  _, state, _ = train(config, make_mesh(fsdp), steps=3)
  Checkpoints(f'{tmp}/fsdp', keep=2).save(3, state, {'epoch': 0})
  saved = to_host(state['params'])
  on_one = restored_params(config, one_device_mesh(), f'{tmp}/fsdp')
  Checkpoints(f'{tmp}/one', keep=2).save(3, on_one, {'epoch': 0})
  back = restored_params(config, make_mesh('data:2,fsdp:2,tensor:2'), f'{tmp}/one')
  results['restored_equal'] = [
    all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(to_host(x))))
    for x in (on_one['params'], back['params'])
  ]
  results['restored_sharded'] = not back['params']['target_embed']['embedding'][
    ...
  ].sharding.is_fully_replicated
  print(json.dumps(results))


if __name__ == '__main__':
  main(sys.argv[1:])
