"""Run by test_lowering.py in a subprocess with 8 simulated CPU devices: the training step (on
one device and on a data x fsdp x tensor = 2 x 2 x 2 mesh) and beam search with the cached
decoding step, of each config/platform pair named on the command line, exported with
jax.export; prints per program whether it lowered and what its StableHLO holds, as JSON.

  python tests/lowering.py default/tpu base/cuda rnn/cpu ...

The jax kernel's cuDNN call is not in these programs: JAX's cuDNN checks need a GPU to answer,
so on this CPU attention_kernel=jax lowers XLA's attention (see model/attention.py).
"""

import json
import os
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax import export  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default, rnn_attention  # noqa: E402
from core.parallel import MESH_AXES, make_mesh  # noqa: E402
from model import decoding  # noqa: E402
from model.architectures import create_model  # noqa: E402
from training.steps import create_training  # noqa: E402

CONFIGS = {
  'default': lambda: default.get_config(),
  'base': lambda: default.get_config('base'),
  'rnn': lambda: rnn_attention.get_config(),
}
# the hashed dropout's multiplier (fast_ops._lowbias32): in a program only if the CPU technique is
HASH_CONSTANT = str(0x7FEB352D)
BATCH_KEYS = ('inputs', 'targets')


def batch_spec(config, sharding):
  """Abstract packed training batch: config.batch_size rows of config.max_train_len tokens."""
  shape = (config.batch_size, config.max_train_len)
  spec = jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)
  return {
    f'{side}{suffix}': spec for side in BATCH_KEYS for suffix in ('', '_position', '_segmentation')
  }


def facts(exported) -> dict:
  text = exported.mlir_module()
  return {
    'platforms': list(exported.platforms),
    'hashed_dropout': HASH_CONSTANT in text,
    'bf16_dot': any('dot_general' in line and 'bf16' in line for line in text.splitlines()),
    'devices': exported.nr_devices,
  }


def train_step(config, mesh, platform):
  training = create_training(config, mesh, abstract=True, platform=platform)
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=training.replicated)
  exported = export.export(training.step_fn, platforms=[platform])(
    training.state, batch_spec(config, training.train_sharding), scalar
  )
  return facts(exported)


def beam_search(config, platform):
  """Beam search at the config's beam size over 4 sources of 20 tokens: the cached decoding
  step inside its loop."""
  graphdef, params, rest = create_model(config, 0, platform)

  def search(params, inputs):
    model = nnx.merge(graphdef, params, rest)
    return decoding.beam_search(model, inputs, beam_size=config.beam_size, max_len=32)

  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  inputs = jax.ShapeDtypeStruct((4, 20), jnp.int32)
  return facts(export.export(jax.jit(search), platforms=[platform])(abstract, inputs))


def main(pairs):
  one = Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), MESH_AXES)
  eight = make_mesh('data:2,fsdp:2,tensor:2')
  results = {}
  for pair in pairs:
    name, platform = pair.split('/')
    config = CONFIGS[name]()
    for program, build in (
      ('train_step_1', lambda: train_step(config, one, platform)),
      ('train_step_8', lambda: train_step(config, eight, platform)),
      ('beam_search', lambda: beam_search(config, platform)),
    ):
      key = f'{name}/{platform}/{program}'
      try:
        results[key] = build()
      except Exception as e:  # pylint: disable=broad-except
        results[key] = {'error': f'{type(e).__name__}: {str(e)[:500]}'}
  print(json.dumps(results))


if __name__ == '__main__':
  main(sys.argv[1:])
