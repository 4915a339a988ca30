"""train_and_evaluate: train a config in a workdir, resuming from its latest checkpoint."""

import functools
import math
import signal
import time
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
import sacrebleu
from flax import nnx
from jax.experimental import multihost_utils

from core.checkpoints import Checkpoints
from core.config import save_config
from core.metrics_log import MetricsLog, format_eta
from core.parallel import describe_placement, global_batch, make_mesh, process_rows, to_host
from core.workdir import check_workdir, disk_full_in_one_line, exclusive_workdir
from evaluation.decode import decode_all, make_decode_fn
from evaluation.metrics import rouge
from input_pipeline import batching
from model.common import count_params
from training.checks import check_resume, validate_training_config
from training.data import load_data
from training.profiling import StepProfiler
from training.steps import all_finite, create_training, eval_step
from training.time_budget import TimeBudget


def train_and_evaluate(config, workdir: str, prepare_only: bool = False):
  """Train `config` in `workdir`, resuming from its latest checkpoint; returns final metrics.
  `prepare_only`: stop once the config, data and vocabulary are checked and saved (no model)."""
  validate_training_config(config)
  budget = TimeBudget(config.time_budget_minutes, config.num_train_steps)
  check_workdir(workdir)
  with exclusive_workdir(workdir), disk_full_in_one_line(workdir):
    return _prepare_and_train(config, workdir, prepare_only, budget)


def _prepare_and_train(config, workdir: str, prepare_only: bool, budget: TimeBudget):
  """train_and_evaluate once the workdir is this process's."""
  check_resume(config, workdir)
  train_iter, tok, eval_data = load_data(config, workdir, MetricsLog.print_main)
  save_config(config, workdir)  # once the config, data and vocabulary are known good
  log = MetricsLog(workdir)
  if prepare_only:
    log.print(
      f'prepared {workdir}: config, data and vocabulary checked, nothing trained '
      f'(--prepare_only); the same command without it trains.'
    )
    return {}

  training = create_training(config, make_mesh(config.mesh))
  graphdef, rest, state = training.graphdef, training.rest, training.state
  replicated, data_sharding = training.replicated, training.data_sharding
  log.print(
    f'model: {count_params(nnx.merge(graphdef, state["params"], rest)):,} parameters; '
    f'{jax.device_count()} devices ({jax.devices()[0].platform}), '
    f'{jax.process_count()} processes; '
    + describe_placement(
      training.data_sharding.mesh,
      {'parameters': state['params'], 'optimizer state': state['opt_state']},
    )
  )
  checkpoints = Checkpoints(workdir, config.keep_checkpoints)
  restored, data_state = checkpoints.restore_latest(
    jax.tree.map(ocp.utils.to_shape_dtype_struct, state), log.print
  )
  if restored is not None:
    state = jax.device_put(restored, training.state_sharding)
    budget.resume(data_state)
    train_iter.set_state(data_state)
    log.print(
      f'resumed from step {int(to_host(state["step"]))} (data epoch '
      f'{data_state["epoch"]}, example {data_state["index"]})'
    )
  step_fn = training.step_fn
  eval_fn = jax.jit(
    functools.partial(eval_step, graphdef=graphdef, rest=rest),
    in_shardings=(training.state_sharding['params'], data_sharding),
    out_shardings=replicated,
  )
  greedy_fn = make_decode_fn(graphdef, rest, config, tok, beam_size=1, alpha=0.0)

  stop_signal = []
  previous_handlers = {
    sig: signal.signal(sig, lambda signum, _: stop_signal.append(signum))
    for sig in (signal.SIGTERM, signal.SIGINT)
  }
  profiler = StepProfiler(config.profile_steps, workdir, log.print)
  try:
    return _train_loop(
      config,
      state,
      Loop(step_fn, eval_fn, greedy_fn, train_iter, tok, eval_data, checkpoints, log, profiler),
      Placement(data_sharding, training.train_sharding, replicated),
      budget,
      stop_signal,
    )
  finally:
    profiler.stop()
    for sig, handler in previous_handlers.items():
      signal.signal(sig, handler)


def stop_requested(stop_signal: list, step: int, every: int) -> str:
  """'' to go on, else why to stop. One process stops at the step its SIGTERM/SIGINT arrives;
  several agree at log steps (an allgather of the signals each received), so that all of them
  save the same step and exit, whichever process a preemption reached."""
  if jax.process_count() == 1:
    return f'received signal {stop_signal[0]}' if stop_signal else ''
  if step % every:
    return ''
  signals = multihost_utils.process_allgather(np.int32(stop_signal[0] if stop_signal else 0))
  signalled = np.flatnonzero(signals)
  if not len(signalled):
    return ''
  return f'received signal {int(signals[signalled[0]])} (process {int(signalled[0])})'


def next_micro_batches(train_iter, k: int) -> dict:
  """The next batch of this process's rows, or for k > 1 the next k stacked: [k, rows, ...]."""
  if k == 1:
    return next(train_iter)
  batches = [next(train_iter) for _ in range(k)]
  return {key: np.stack([b[key] for b in batches]) for key in batches[0]}


class Loop(NamedTuple):
  """What the training loop runs: the compiled functions, the data and where results go."""

  step_fn: Any  # (state, batch, time_position) -> (state, metrics)
  eval_fn: Any  # (params, batch) -> NLL, correct and token sums
  greedy_fn: Any  # (params, inputs, max_len) -> token ids
  train_iter: Any
  tok: Any
  eval_data: tuple  # (sources, targets, references) of the validation split
  checkpoints: Checkpoints
  log: MetricsLog
  profiler: StepProfiler  # config.profile_steps


class Placement(NamedTuple):
  """Where arrays live: batches split over the mesh's batch axes, scalars replicated."""

  data_sharding: Any  # evaluation batches
  train_sharding: Any  # training batches: [rows, ...], or [k, rows, ...] with accumulation
  replicated: Any


def _train_loop(config, state, loop: Loop, placement: Placement, budget, stop_signal):
  """Steps until config.num_train_steps, the time budget or a stop signal; checkpoints, logs and
  evaluates."""
  step_fn, eval_fn, greedy_fn, train_iter, tok, eval_data, checkpoints, log, profiler = loop
  data_sharding, train_sharding, replicated = placement
  step = int(to_host(state['step']))
  pending, window_start, window_steps = [], time.time(), 0
  metrics = {}
  elapsed, position, spent = budget.check()
  time_position = jax.device_put(np.float32(position), replicated)
  if budget.seconds:
    log.print(
      f'time budget: {config.time_budget_minutes:g} min (config.time_budget_minutes; 0 '
      f'turns it off), {elapsed / 60:.1f} used: training stops at step '
      f'{config.num_train_steps} or when it is spent, the schedule following whichever '
      f'comes first.'
    )
  if spent and step < config.num_train_steps:
    log.print(
      f'the time budget was spent at step {step}: nothing to train. To go on, raise '
      f'config.time_budget_minutes.'
    )
    return metrics

  def stop_not_finite(what: str):
    """Stop the run: `what` went NaN/Inf. Checkpoints are saved only with finite losses and
    parameters, so the newest is the last good one."""
    good = checkpoints.manager.latest_step()
    kept = (
      f'The last good checkpoint (step {good}) is kept.'
      if good is not None
      else 'No checkpoint had been saved.'
    )
    raise FloatingPointError(
      f'{what}; stopping. {kept} Lower config.learning_rate or raise config.warmup_steps.'
    )

  def check_finite():
    """Stop naming the first step whose loss is NaN/Inf."""
    for s, m in pending:
      loss = float(to_host(m['loss']))
      if not np.isfinite(loss):
        stop_not_finite(f'loss is {loss} at step {s}')

  def save(step):
    check_finite()
    if not bool(to_host(all_finite(state['params']))):
      stop_not_finite(f'the parameters are not finite after step {step}, not saved')
    checkpoints.save(step, state, {**train_iter.get_state(), **budget.to_save()})

  while step < config.num_train_steps and not spent:
    batch = global_batch(next_micro_batches(train_iter, config.grad_accum_steps), train_sharding)
    profiler.before_step(step)
    state, step_metrics = step_fn(state, batch, time_position)
    step += 1
    profiler.after_step(step, state)
    pending.append((step, step_metrics))
    window_steps += 1
    stop = stop_requested(stop_signal, step, config.log_every_steps)
    if step % config.log_every_steps == 0 or step == config.num_train_steps or stop:
      check_finite()
      fetched = to_host([m for _, m in pending])
      elapsed, position, spent = budget.check(training=True)
      time_position = jax.device_put(np.float32(position), replicated)
      seconds = time.time() - window_start
      window_tokens = sum(m['tokens'] for m in fetched)
      last = fetched[-1]
      means = {
        k: float(np.mean([m[k] for m in fetched])) for k in ('loss', 'nll', 'accuracy', 'grad_norm')
      }
      metrics = {f'train/{k}': v for k, v in means.items()}
      metrics.update(
        {
          'train/perplexity': math.exp(min(means['nll'], 50)),
          'train/learning_rate': float(last['learning_rate']),
          'train/tokens_per_sec': window_tokens / seconds,
          'train/steps_per_sec': window_steps / seconds,
          'train/padding_fraction': train_iter.padding_fraction,
          'train/elapsed_minutes': elapsed / 60,
        }
      )
      log.write(step, metrics)
      eta = (config.num_train_steps - step) / max(metrics['train/steps_per_sec'], 1e-9)
      if budget.seconds:
        eta = min(eta, max(budget.seconds - budget.reserve - elapsed, 0.0))
      log.print(
        f'step {step}/{config.num_train_steps} | loss {means["loss"]:.3f} '
        f'ppl {metrics["train/perplexity"]:.2f} acc {means["accuracy"]:.3f} | '
        f'lr {metrics["train/learning_rate"]:.2e} gnorm {means["grad_norm"]:.2f} | '
        f'{metrics["train/tokens_per_sec"]:,.0f} tok/s '
        f'{metrics["train/steps_per_sec"]:.2f} step/s '
        f'pad {100 * train_iter.padding_fraction:.0f}% | ETA {format_eta(eta)}'
      )
      pending, window_start, window_steps = [], time.time(), 0
    if stop:
      save(step)
      checkpoints.wait()
      log.print(f'{stop}: saved checkpoint at step {step}; rerun the same command to resume.')
      return metrics
    last_step = step == config.num_train_steps or spent
    if spent and step < config.num_train_steps:
      log.print(
        f'time budget of {config.time_budget_minutes:g} min spent at step {step} '
        f'({elapsed / 60:.1f} min, the schedule at step {position:.0f} of '
        f'{config.num_train_steps}): final checkpoint and validation.'
      )
    if step % config.checkpoint_every_steps == 0 or last_step:
      save(step)
    if step % config.eval_every_steps == 0 or last_step:
      eval_start = budget.clock()
      eval_metrics = {}
      for key, prefix in (('params', 'eval'), ('ema_params', 'eval_ema')):
        if key in state:  # the parameters, and their moving average where the run keeps one
          eval_metrics.update(
            evaluate(
              state[key],
              eval_fn,
              greedy_fn,
              eval_data,
              tok,
              config,
              data_sharding,
              config.num_eval_bleu_batches,
              prefix=prefix,
            )
          )
      budget.reserve = budget.clock() - eval_start
      log.write(step, eval_metrics)
      metrics.update(eval_metrics)
      log.print(
        f'eval at step {step} | '
        + ' '.join(
          f'{k.replace("eval/", "").replace("eval_ema/", "ema_")} {v:.3f}'
          for k, v in eval_metrics.items()
        )
      )
      window_start = time.time()  # evaluation time does not count against training speed
  checkpoints.wait()
  if 'eval/bleu' in metrics:
    log.print(
      f'final validation BLEU ({config.num_eval_bleu_batches} greedy batches, '
      f'SacreBLEU): {metrics["eval/bleu"]:.2f}'
    )
  return metrics


def evaluate(
  params, eval_fn, greedy_fn, eval_data, tok, config, sharding, num_bleu_batches, prefix='eval'
):
  """Validation NLL/accuracy over the whole split; BLEU (and ROUGE for summarization) of the
  first `num_bleu_batches` batches of sources, decoded greedily by `decode_all` as eval.py
  decodes; metric names '<prefix>/<name>'."""
  sources, targets, references = eval_data
  totals = {'nll_sum': 0.0, 'correct': 0.0, 'tokens': 0.0}
  for batch in batching.eval_batches(sources, config.eval_batch_size, config.max_eval_len, targets):
    arrays = global_batch(
      {'inputs': process_rows(batch['inputs']), 'targets': process_rows(batch['targets'])}, sharding
    )
    for k, v in to_host(eval_fn(params, arrays)).items():
      totals[k] += float(v)
  tokens = max(totals['tokens'], 1.0)
  metrics = {'nll': totals['nll_sum'] / tokens, 'accuracy': totals['correct'] / tokens}
  metrics['perplexity'] = math.exp(min(metrics['nll'], 50))
  decoded = min(len(sources), num_bleu_batches * config.eval_batch_size)
  if decoded:
    hypotheses = [
      tok.decode(ids)
      for ids in decode_all(
        sources[:decoded], greedy_fn, params, config, config.eval_batch_size, sharding
      )
    ]
    refs = references[:decoded]
    metrics['bleu'] = sacrebleu.corpus_bleu(hypotheses, [refs]).score
    if config.task == 'summarization':
      metrics.update(rouge(hypotheses, [[ref] for ref in refs]))
  return {f'{prefix}/{name}': value for name, value in metrics.items()}
