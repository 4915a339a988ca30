"""A wall-time budget that the learning-rate schedule follows (config.time_budget_minutes)."""

import time

import jax
import numpy as np
from jax.experimental import multihost_utils


class TimeBudget:
  """config.time_budget_minutes: a cap on the run's wall time that the schedule follows.

  Time counts from the start of train_and_evaluate (data, vocabulary and compilation included)
  and carries over resumes (checkpoints store it); downtime between them does not count. The
  learning-rate schedule runs at max(step, time position): config.num_train_steps x the share
  spent of the training time, which runs from the first logged step (so set-up and compilation
  do not move the schedule, and the first steps take the schedule's first rates) to the end of
  the budget less the last evaluation's duration (held back for the final one). On a machine
  fast enough for all the steps the run is the step-based one; on a slower one the schedule runs
  on wall time, completes its decay as the budget is spent, and training stops there, short of
  num_train_steps. Processes agree on process 0's clock (one broadcast per check), so they take
  the same rates and stop together.
  """

  clock = staticmethod(time.monotonic)  # tests substitute their own

  def __init__(self, minutes: float, num_train_steps: int):
    self.seconds = 60.0 * minutes
    self.num_train_steps = num_train_steps
    self.origin = self.clock()  # moved back by the time of earlier runs on resume
    self.reserve = 0.0  # seconds of the last evaluation
    self.start = None  # elapsed seconds at the first logged step: the schedule's zero

  def resume(self, saved: dict):
    """Take (and remove) what `to_save` put into a checkpoint's data state."""
    self.origin -= saved.pop('elapsed_seconds')
    self.start = saved.pop('schedule_clock_start', None)

  def to_save(self) -> dict:
    elapsed = self.check()[0]
    return {
      'elapsed_seconds': elapsed,
      **({} if self.start is None else {'schedule_clock_start': self.start}),
    }

  def check(self, training: bool = False):
    """(elapsed seconds, time position, whether the budget is spent), the same in every process;
    the first check with `training` starts the schedule's clock."""
    elapsed, reserve = self.clock() - self.origin, self.reserve
    if jax.process_count() > 1:
      elapsed, reserve = (
        float(v)
        for v in multihost_utils.broadcast_one_to_all(np.array([elapsed, reserve], np.float32))
      )
    if training and self.start is None:
      self.start = elapsed
    return (
      elapsed,
      *budget_position(elapsed, self.start, reserve, self.seconds, self.num_train_steps),
    )


def budget_position(elapsed: float, start, reserve: float, budget: float, num_train_steps: int):
  """(time position, spent) at `elapsed` seconds of a `budget` (0: none) of which `reserve` is
  held back, the schedule's clock having started at `start` (None: not yet, position 0): the
  position is num_train_steps x (elapsed - start) / (budget - reserve - start), at most
  num_train_steps, which it reaches as the budget is spent."""
  if budget <= 0:
    return 0.0, False
  spent = elapsed + reserve >= budget
  if start is None:
    return 0.0, spent
  share = (elapsed - start) / max(budget - reserve - start, 1e-9)
  return num_train_steps * min(max(share, 0.0), 1.0), spent
