"""Orbax checkpoints of the training state and the data iterator's position."""

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from core.config import ConfigError, first_difference, one_line, tree_signature
from core.workdir import DiskFullError, is_disk_full


def state_bytes(state) -> int:
  """Bytes of the arrays in `state`: about what a checkpoint of it takes on disk."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state) if hasattr(x, 'dtype'))


def absolute_path(path: str) -> epath.Path:
  """Local paths made absolute (orbax requires it); URIs such as gs://... kept as they are."""
  return epath.Path(path if '://' in path else os.path.abspath(path))


class Checkpoints:
  """Orbax checkpoints of {step, params, opt_state} plus the data iterator's JSON state.

  A checkpoint whose arrays differ in structure, shape or dtype from the state to restore was
  written under another config: restoring stops with a ConfigError and moves nothing. A
  checkpoint whose data cannot be read is moved aside to checkpoints/corrupt_<step> (never
  deleted) and the previous one is used.
  """

  def __init__(self, workdir: str, keep: int):
    self.directory = absolute_path(workdir) / 'checkpoints'
    # Synchronous saves: a failed save stops the run at once instead of in a background thread.
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False
      ),
    )

  def save(self, step: int, state, data_state: dict):
    """Save checkpoint `step`. A disk without room for it (checked first, from the free space
    of a local directory, and again if a write fails with ENOSPC) stops the run with a
    DiskFullError; the partial write is removed and every complete checkpoint kept."""
    if step in self.manager.all_steps():
      return  # already saved (e.g. the final step after a resume); never overwrite
    needed = state_bytes(state)  # a lower bound: the arrays, without the format's overhead
    if '://' not in str(self.directory):
      free = shutil.disk_usage(self.directory).free
      if free < needed:
        raise self._disk_full(step, f'{free / 1e6:.1f} MB free, {needed / 1e6:.1f} MB needed')
    try:
      self.manager.save(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
        ),
      )
    except Exception as e:  # pylint: disable=broad-except
      if not is_disk_full(e):
        raise
      if jax.process_index() == 0:
        for partial in self.directory.glob(f'{step}.orbax-checkpoint-tmp*'):
          shutil.rmtree(partial, ignore_errors=True)
      raise self._disk_full(step, 'no space left on device') from None

  def _disk_full(self, step: int, why: str) -> DiskFullError:
    kept = self.manager.latest_step()
    return DiskFullError(
      f'checkpoint step {step} does not fit in {self.directory} ({why}); '
      + (f'step {kept}, the newest, is intact; ' if kept is not None else '')
      + 'free disk space (or lower config.keep_checkpoints), then rerun the same command.'
    )

  def restore_latest(self, abstract_state, log=print):
    """(state, data_state) of the newest checkpoint that restores, or (None, None)."""
    expected = tree_signature(abstract_state)
    for step in sorted(self.manager.all_steps(), reverse=True):
      saved = self._saved_signature(step)
      if saved is not None and saved != expected:
        raise ConfigError(
          f'checkpoint step {step} in {self.directory} holds a training state that this config '
          f'does not build ({first_difference(expected, saved)}); nothing was moved. Resume '
          f'with the config the run was trained with (its config.json) or use a new --workdir.'
        )
      try:
        restored = self.manager.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
          ),
        )
        return restored['state'], restored['data']
      except Exception as e:  # pylint: disable=broad-except
        aside = self.directory / f'corrupt_{step}'
        log(
          f'checkpoint step {step} failed to restore ({one_line(e)}); '
          f'moved to {aside}, trying the previous one.'
        )
        if jax.process_index() == 0:
          (self.directory / str(step)).rename(aside)
        self.manager.reload()
    return None, None

  def _saved_signature(self, step: int):
    """`tree_signature` of the state saved at `step`, from its metadata; None if unreadable."""
    reader = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False),
      item_handlers={'state': ocp.StandardCheckpointHandler(), 'data': ocp.JsonCheckpointHandler()},
    )
    try:
      metadata = reader.item_metadata(step)['state']
    except Exception:  # pylint: disable=broad-except
      return None
    return tree_signature(metadata) if metadata is not None else None

  def restore_params(self, step: int, abstract_params, key: str = 'params'):
    """The parameters ('params', or 'ema_params' for their moving average) at `step`, as NumPy
    arrays shaped like `abstract_params`. Only that subtree is read (a partial restore): not the
    optimizer's moments, twice the parameters' size, nor the rest of the state. Use an instance
    for this or for restore_latest, not both (orbax binds the restore type on first use)."""
    item = {key: abstract_params}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    return self.manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
      ),
    )['state'][key]

  def wait(self):
    self.manager.wait_until_finished()
