"""The workdir: checked writable before anything else, held by one train.py at a time, and a
full disk reported in one line."""

import contextlib
import errno
import fcntl
import os
import socket
import time

import jax
from etils import epath

from core.config import ConfigError

LOCK_FILE = 'train.lock'


class DiskFullError(OSError):
  """The workdir's disk is full; the message says what was being written and what is intact."""


def is_disk_full(error: Exception) -> bool:
  """True for 'No space left on device', raised by Python (OSError ENOSPC) or by TensorStore
  (orbax's array writer: a ValueError with the operating system's message)."""
  return getattr(error, 'errno', None) == errno.ENOSPC or 'No space left on device' in str(error)


@contextlib.contextmanager
def disk_full_in_one_line(workdir: str):
  """Turns an ENOSPC from any write under the workdir (metrics, vocabulary, evaluation files)
  into a DiskFullError of one line; checkpoints raise their own, naming the step kept."""
  try:
    yield
  except DiskFullError:
    raise
  except OSError as e:
    if not is_disk_full(e):
      raise
    raise DiskFullError(
      f'no space left on device writing {e.filename or workdir}; free disk space, then rerun '
      f'the same command to resume from the newest checkpoint.'
    ) from None


def check_workdir(workdir: str):
  """Fail early, in one line, if the workdir cannot be written."""
  path = epath.Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f'.write_probe.{jax.process_index()}.{os.getpid()}'  # one per process
    probe.write_text('ok')
    probe.unlink()
  except OSError as e:
    raise ConfigError(
      f'--workdir={workdir} is not writable ({e.strerror or e}); choose a '
      f'directory you can write to.'
    ) from None


@contextlib.contextmanager
def exclusive_workdir(workdir: str):
  """Hold <workdir>/train.lock while training: a second train.py on the same workdir stops in
  one line naming the process that holds it. The lock is the operating system's (flock), so a
  run that crashed or was killed leaves no stale lock: its process gone, the next run takes it
  over. Process 0 holds it for every process of a multi-host run. Workdirs on object stores
  (gs://...) have no such lock and are not locked."""
  if jax.process_index() != 0 or '://' in workdir:
    yield
    return
  fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 200, 0).decode(errors='replace').strip() or 'another process'
      raise ConfigError(
        f'--workdir={workdir} is in use by {holder}; wait for it to end, stop '
        f'it, or use another --workdir.'
      ) from None
    os.ftruncate(fd, 0)
    started = time.strftime('%Y-%m-%d %H:%M:%S')
    os.pwrite(
      fd, f'train.py, process {os.getpid()} on {socket.gethostname()} since {started}'.encode(), 0
    )
    yield
  finally:
    os.close(fd)  # releases the lock
