"""A profiler trace of chosen training steps (config.profile_steps), for TensorBoard's profile
plugin or Perfetto."""

import jax
from etils import epath


def parse_profile_steps(spec: str):
  """'' -> None; 'a:b' (0 <= a < b) -> (a, b): trace the steps that take the run from step a to
  step b. ValueError for anything else."""
  if not spec:
    return None
  try:
    start, end = (int(part) for part in spec.split(':'))
  except ValueError:
    start = end = -1
  if not 0 <= start < end:
    raise ValueError(
      f"config.profile_steps={spec!r} is not of the form 'a:b' with 0 <= a < b (e.g. '100:105' "
      "traces steps 101 to 105); '' traces none."
    )
  return start, end


class StepProfiler:
  """Traces the training steps config.profile_steps names with `jax.profiler` into
  <workdir>/plugins/profile/<time>/: an .xplane.pb file (TensorBoard's profile plugin: tensorboard
  --logdir=<workdir>) and perfetto_trace.json.gz (open it at ui.perfetto.dev). A run resumed past
  the start of that range traces nothing."""

  def __init__(self, spec: str, workdir: str, log=print):
    self.steps, self.workdir, self.log = parse_profile_steps(spec), workdir, log
    self.tracing = False

  def before_step(self, step: int):
    """Call before the update that takes the state from `step` to step + 1."""
    if self.steps and step == self.steps[0]:
      jax.profiler.start_trace(self.workdir, create_perfetto_trace=True)
      self.tracing = True

  def after_step(self, step: int, state):
    """Call after the update that reached `step`, with the state it produced."""
    if self.tracing and step == self.steps[1]:
      jax.block_until_ready(state)
      self.stop()
      where = epath.Path(self.workdir) / 'plugins' / 'profile'
      self.log(
        f'profile of steps {self.steps[0] + 1} to {step} written to {where} (tensorboard '
        f'--logdir={self.workdir}, or its perfetto_trace.json.gz at ui.perfetto.dev)'
      )

  def stop(self):
    """End a trace still running (the run stopped inside the range)."""
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False
