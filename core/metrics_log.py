"""Metrics to metrics.jsonl and TensorBoard (process 0), progress lines to stdout."""

import json
import math
import time

import jax
from etils import epath
from tensorboardX import SummaryWriter


class MetricsLog:
  """metrics.jsonl and TensorBoard event files (tensorboardX, which needs no TensorFlow: clu's
  writers import it, ~440 MB more per process) from process 0; progress lines on stdout."""

  def __init__(self, workdir: str):
    self.is_main = jax.process_index() == 0
    self.tensorboard = SummaryWriter(logdir=workdir) if self.is_main else None
    self.jsonl = epath.Path(workdir) / 'metrics.jsonl'

  def write(self, step: int, scalars: dict):
    """One record per call: `scalars` (names such as 'train/loss', 'eval/bleu') at `step`."""
    scalars = {k: float(v) for k, v in scalars.items()}
    if self.is_main:
      for name, value in scalars.items():
        self.tensorboard.add_scalar(name, value, step)
      self.tensorboard.flush()
      with self.jsonl.open('a') as f:
        f.write(json.dumps({'step': step, 'time': time.time(), **scalars}) + '\n')

  def print(self, message: str):
    self.print_main(message)

  @staticmethod
  def print_main(message: str):
    """Print from process 0 only."""
    if jax.process_index() == 0:
      print(message, flush=True)


def format_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  return (
    f'{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m'
    if seconds >= 3600
    else f'{int(seconds // 60)}m{int(seconds % 60):02d}s'
  )
