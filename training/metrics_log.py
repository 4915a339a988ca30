"""Metrics to metrics.jsonl and TensorBoard (process 0), progress lines to stdout."""

import json
import math
import os
import socket
import time

import jax
from etils import epath
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter


class TensorBoardWriter:
  """Scalars in TensorBoard's event-file format (TFRecord-framed `Event` protos), written with
  tensorboard's own modules: clu's writers import TensorFlow, ~600 MB more RSS per process."""

  def __init__(self, logdir: str):
    name = f'events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}'
    self.records = RecordWriter((epath.Path(logdir) / name).open('wb'))
    self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  def write_scalars(self, step: int, scalars: dict):
    values = [summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()]
    self._write(event_pb2.Event(wall_time=time.time(), step=step,
                                summary=summary_pb2.Summary(value=values)))

  def _write(self, event):
    self.records.write(event.SerializeToString())
    self.records.flush()


class MetricsLog:
  """metrics.jsonl + TensorBoard from process 0; concise lines on stdout."""

  def __init__(self, workdir: str):
    self.is_main = jax.process_index() == 0
    self.writer = TensorBoardWriter(workdir) if self.is_main else None
    self.jsonl = epath.Path(workdir) / 'metrics.jsonl'

  def write(self, step: int, scalars: dict):
    scalars = {k: float(v) for k, v in scalars.items()}
    if self.is_main:
      self.writer.write_scalars(step, scalars)
      with self.jsonl.open('a') as f:
        f.write(json.dumps({'step': step, 'time': time.time(), **scalars}) + '\n')

  def print(self, message: str):
    if self.is_main:
      print(message, flush=True)


def format_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  return f'{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m' if seconds >= 3600 else \
      f'{int(seconds // 60)}m{int(seconds % 60):02d}s'
