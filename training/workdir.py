"""The workdir: checked writable before anything else, and held by one train.py at a time."""

import contextlib
import fcntl
import os
import socket
import time

import jax
from etils import epath

from training.checks import ConfigError

LOCK_FILE = 'train.lock'


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
