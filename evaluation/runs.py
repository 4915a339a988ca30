"""Restoring a training run: its config, tokenizer and (averaged or ensembled) parameters."""

import math
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from etils import epath

from core.checkpoints import Checkpoints
from core.config import one_line, read_saved_config, save_config
from core.parallel import BATCH_AXES, make_mesh, parse_rules, state_shardings
from evaluation import EvalError
from input_pipeline import tokenizer as tokenizer_lib
from model.architectures import create_model

# config fields an ensemble's members must share: they fix what text the models read and write
SHARED_FIELDS = ('task', 'dataset', 'source_lang', 'target_lang', 'lowercase')


class Restored(NamedTuple):
  """A run ready to decode: its workdir, config (decoding fields as requested), tokenizer, the
  model's nnx.split parts (lists of them for an ensemble) and the checkpoint steps used."""

  workdir: str
  config: Any
  tok: tokenizer_lib.Tokenizer
  graphdef: Any
  params: Any
  rest: Any
  steps: list
  ema: bool = False
  ensemble: tuple = ()
  mesh: Any = None


def restore(
  workdir: str, config, tok, step=None, ensemble=(), ema=False, mesh: str | None = None
) -> Restored:
  """The run in `workdir` (with `ensemble` workdirs as more members) at config.average_last
  checkpoints up to `step` (default: the latest), its parameters split over the devices of
  every process as in training: on the mesh `mesh` (default: the run's config.mesh, see
  `decoding_mesh`) by each run's config.sharding_rules. Decoding batches are split over the
  mesh's batch axes."""
  device_mesh = decoding_mesh(mesh, config.mesh)
  if config.eval_batch_size % math.prod(device_mesh.shape[a] for a in BATCH_AXES):
    raise EvalError(
      f'--batch_size={config.eval_batch_size} is not divisible by the '
      f'{math.prod(device_mesh.shape[a] for a in BATCH_AXES)} devices of the mesh axes data '
      f'and fsdp; give a multiple of them.'
    )
  if ensemble:
    graphdef, params, rest, steps = load_ensemble(
      config, tok, workdir, ensemble, step, config.average_last, ema, device_mesh
    )
  else:
    graphdef, params, rest, steps = load_params(
      config, workdir, step, config.average_last, ema, device_mesh
    )
  return Restored(
    workdir, config, tok, graphdef, params, rest, steps, ema, tuple(ensemble), device_mesh
  )


def decoding_mesh(spec: str | None, run_spec: str):
  """The device mesh over every device of every process: `spec` (a one-line error if it does
  not fit them), else the run's `run_spec` where it fits, else whole parameters on every
  device ('data:-1'), said on stderr."""
  try:
    return make_mesh(spec, '--mesh') if spec else make_mesh(run_spec)
  except ValueError as e:
    if spec:
      raise EvalError(str(e)) from None
  print(
    f"eval: the run's config.mesh={run_spec!r} does not fit these {jax.device_count()} "
    f'devices; decoding with whole parameters on each (--mesh=data:-1; --mesh chooses).',
    file=sys.stderr,
  )
  return make_mesh('data:-1')


def load_run(workdir: str, flag: str = '--workdir'):
  """(config, tokenizer) of a training run's workdir (named by `flag` in errors)."""
  path = epath.Path(workdir)
  if not path.exists():
    raise EvalError(
      f'{flag}={workdir} does not exist; train first: python train.py '
      f'--config=... --workdir={workdir}'
    )
  if not (path / 'config.json').exists():
    raise EvalError(f'{workdir} holds no config.json: it is not a train.py workdir.')
  return read_saved_config(workdir), tokenizer_lib.Tokenizer(str(path / tokenizer_lib.FILENAME))


def load_params(
  config, workdir: str, step=None, average_last: int = 1, ema: bool = False, mesh=None
):
  """Parameters of one checkpoint, or the mean of the last K (Vaswani et al.'s averaging);
  ema: their exponential moving average instead (a run with config.ema_decay > 0). With a
  `mesh`, split over it by config.sharding_rules (else on the default device).

  Returns (graphdef, params, rest, the steps used).
  """
  if ema and not config.ema_decay:
    raise EvalError(
      f'--ema: {workdir} kept no moving average (its config.ema_decay is 0); '
      f'drop --ema, or train with --config.ema_decay=0.999.'
    )
  graphdef, params, rest = create_model(config, 0)
  checkpoints = Checkpoints(workdir, keep=max(config.keep_checkpoints, average_last))
  steps = sorted(checkpoints.manager.all_steps())
  if not steps:
    raise EvalError(f'no checkpoint in {workdir}/checkpoints; train (longer) first.')
  if step is not None:
    if step not in steps:
      raise EvalError(f'--step={step} has no checkpoint in {workdir}; available: {steps}.')
    steps = [s for s in steps if s <= step]
  if average_last < 1:
    raise EvalError(f'--average_last={average_last} must be >= 1.')
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  key = 'ema_params' if ema else 'params'
  restored, used = [], []
  for s in reversed(steps):  # newest first; an unreadable one is passed over, never moved
    try:
      restored.insert(0, checkpoints.restore_params(s, abstract, key))
      used.insert(0, s)
    except Exception as e:  # pylint: disable=broad-except
      if s == step:
        raise EvalError(f'--step={step}: its checkpoint cannot be read ({one_line(e)}).') from None
      print(
        f'warning: checkpoint step {s} cannot be read ({one_line(e)}); passed over.',
        file=sys.stderr,
      )
    if len(used) == average_last:
      break
  if not used:
    raise EvalError(f'no checkpoint in {workdir}/checkpoints can be read; train again.')
  if mesh is None:
    restored = [jax.tree.map(jnp.asarray, r) for r in restored]
  else:  # each checkpoint split over the mesh as it is read: no device holds a whole copy
    rules = parse_rules(config.sharding_rules)
    restored = [jax.device_put(r, state_shardings(r, mesh, rules)) for r in restored]
  # The mean in float32 on the devices, as the scores in docs/results.md were computed: summed
  # and divided in NumPy instead, some parameters differ in the last bit, and so do a few beams.
  averaged = jax.tree.map(lambda *xs: sum(xs) / len(xs), *restored)
  return graphdef, averaged, rest, used


def load_ensemble(config, tok, workdir, members, step=None, average_last=1, ema=False, mesh=None):
  """`load_params` of --workdir and of each member workdir, after checking that the members
  read and write the same text with the same vocabulary.

  Returns lists (graphdefs, params, rests) in that order, and --workdir's steps used.
  """
  runs = [(config, workdir)]
  for member in members:
    member_config, member_tok = load_run(member, '--ensemble')
    if member_tok.vocabulary() != tok.vocabulary():
      raise EvalError(
        f'--ensemble: {member} has another vocabulary than {workdir}; members '
        f'share one: copy {workdir}/{tokenizer_lib.FILENAME} into a new workdir '
        f'before training it there.'
      )
    for field in SHARED_FIELDS:
      if member_config.get(field) != config.get(field):
        raise EvalError(
          f'--ensemble: {member} has config.{field}={member_config.get(field)!r}, '
          f'{workdir} {config.get(field)!r}; members must agree.'
        )
    runs.append((member_config, member))
  loaded = [load_params(c, w, step, average_last, ema, mesh) for c, w in runs]
  graphdefs, params, rests, used = zip(*loaded)
  return list(graphdefs), list(params), list(rests), used[0]


def export_params(workdir: str, output: str, step=None, average_last=None, ema=False) -> list:
  """Write the decoding parameters of the run in `workdir` to a new workdir `output` that
  eval.py reads like a run's: the last `average_last` (default: config.average_last)
  checkpoints up to `step` averaged (or their moving average, ema)
  into one parameters-only checkpoint at the last step, beside config.json (average_last 1,
  since they are averaged already) and tokenizer.model. Returns the steps averaged."""
  target = epath.Path(output)
  if target.exists() and any(target.iterdir()):
    raise EvalError(f'--output={output} is not empty; name a new directory.')
  config, _ = load_run(workdir)
  average_last = config.average_last if average_last is None else average_last
  _, params, _, steps = load_params(config, workdir, step, average_last, ema)
  target.mkdir(parents=True, exist_ok=True)
  Checkpoints(output, keep=1).save(steps[-1], {'params': params}, {})
  (target / tokenizer_lib.FILENAME).write_bytes(
    (epath.Path(workdir) / tokenizer_lib.FILENAME).read_bytes()
  )
  config.average_last, config.ema_decay, config.keep_checkpoints = 1, 0.0, 1
  save_config(config, output)
  return steps
