"""The device mesh, where the training state and batches live on it, and moving batches and
results between processes and devices."""

import math

import jax
import numpy as np
from absl import flags
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # batch rows are split over both; 'tensor' devices share rows


def define_process_flags():
  """The flags of a run over several processes (hosts), shared by train.py and eval.py."""
  flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() (auto-detect).')
  flags.DEFINE_string('coordinator_address', None, 'Multi-process: host:port of process 0.')
  flags.DEFINE_integer('num_processes', None, 'Multi-process: number of processes.')
  flags.DEFINE_integer('process_id', None, 'Multi-process: this process (0-based).')


def initialize_processes(values):
  """jax.distributed.initialize from those flags' `values`, when they ask for processes."""
  if values.distributed or values.num_processes:
    jax.distributed.initialize(values.coordinator_address, values.num_processes, values.process_id)


def parse_mesh(spec: str, devices: int, label: str = 'config.mesh') -> tuple:
  """'data:-1,fsdp:4,tensor:1' -> the sizes of MESH_AXES over `devices` devices; one axis may be
  -1 (the devices left over), an axis not named has size 1. Errors call the spec `label`."""
  sizes = dict.fromkeys(MESH_AXES, 1)
  try:
    for item in spec.split(','):
      name, size = item.split(':')
      if name.strip() not in sizes:
        raise ValueError
      sizes[name.strip()] = int(size)
  except ValueError:
    raise ValueError(
      f"{label}={spec!r} is not of the form 'data:-1,fsdp:1,tensor:1' (axes {MESH_AXES})."
    ) from None
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1 or any(size < 1 and size != -1 for size in sizes.values()):
    raise ValueError(f'{label}={spec!r}: sizes are >= 1, and at most one is -1.')
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if free and devices % fixed == 0:
    sizes[free[0]] = devices // fixed
  if math.prod(sizes.values()) != devices:
    raise ValueError(
      f'{label}={spec!r} does not cover the {devices} devices ({sizes}); make the '
      f'sizes multiply to {devices}, or give one of them as -1.'
    )
  return tuple(sizes.values())


def make_mesh(spec: str = 'data:-1', label: str = 'config.mesh'):
  """The ('data', 'fsdp', 'tensor') mesh of `spec` (parse_mesh) over every device of every
  process; the default puts them all on 'data' (pure data parallelism)."""
  sizes = parse_mesh(spec, jax.device_count(), label)
  return jax.make_mesh(sizes, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def parse_rules(spec: str) -> dict:
  """'embed:fsdp,heads:tensor,mlp:tensor' -> {logical axis name: mesh axis}."""
  try:
    rules = dict(item.split(':') for item in spec.split(',') if item)
  except ValueError:
    rules = None
  if rules is None or not set(rules.values()) <= set(MESH_AXES):
    raise ValueError(
      f"config.sharding_rules={spec!r} is not of the form 'embed:fsdp,heads:tensor' (logical "
      f'axis: one of {MESH_AXES}).'
    )
  return rules


def state_shardings(state, mesh, rules: dict):
  """A NamedSharding for every array of a training state: each parameter, and its optimizer
  moments and moving average, split along its logical axes (`logical_param` metadata) over
  the mesh axes `rules` names; a dimension the mesh axis does not divide, and every array
  without logical axes (step, counts), is not split."""

  def sharding(leaf):
    if not isinstance(leaf, nnx.Variable):
      return NamedSharding(mesh, P())
    spec = []
    for name, size in zip(leaf.get_metadata().get('out_sharding') or (), leaf.shape):
      axis = rules.get(name)
      fits = axis is not None and size % mesh.shape[axis] == 0 and axis not in spec
      spec.append(axis if fits else None)
    return leaf.replace(NamedSharding(mesh, P(*spec)))

  return jax.tree.map(sharding, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def bytes_per_device(tree) -> tuple:
  """(bytes of `tree`'s arrays that one device holds, bytes of the arrays whole), from each
  array's sharding (its shard shape); also for abstract arrays (jax.ShapeDtypeStruct)."""
  held = whole = 0
  for x in jax.tree.leaves(tree):
    held += math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
    whole += math.prod(x.shape) * x.dtype.itemsize
  return held, whole


def describe_placement(mesh, parts: dict) -> str:
  """'mesh data 2 x fsdp 2 x tensor 2; per device: parameters 0.03 of 0.11 MB, ...' for the
  {name: tree of arrays} `parts` placed on `mesh`."""
  axes = ' x '.join(f'{axis} {size}' for axis, size in mesh.shape.items())
  held = (
    f'{name} {held / 1e6:.2f} of {whole / 1e6:.2f} MB'
    for name, (held, whole) in ((name, bytes_per_device(tree)) for name, tree in parts.items())
  )
  return f'mesh {axes}; per device: ' + ', '.join(held)


def global_batch(local_batch: dict, sharding):
  """This process's rows -> global arrays sharded as `sharding` says (over the batch axes)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def process_rows(array):
  """This process's contiguous share of the rows of a batch every process holds whole."""
  rows = array.shape[0] // jax.process_count()
  return array[jax.process_index() * rows : (jax.process_index() + 1) * rows]


def to_host(tree):
  """NumPy values of (possibly multi-process) arrays: replicated ones read from a local shard,
  sharded ones gathered from every process."""

  def fetch(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

  return jax.tree.map(fetch, tree)
