"""The device mesh and moving batches and results between processes and devices."""

import jax
import numpy as np
from jax.experimental import multihost_utils


def make_mesh():
  """A 1-D mesh named 'data' over every device of every process."""
  return jax.make_mesh((jax.device_count(),), ('data',), axis_types=(jax.sharding.AxisType.Auto,))


def global_batch(local_batch: dict, sharding):
  """This process's rows -> global arrays sharded over the 'data' axis."""
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
