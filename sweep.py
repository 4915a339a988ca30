r"""Run a sweep: every trial of a sweep file trains and evaluates in its own workdir.

  python sweep.py --config=configs/default.py --sweep=configs/sweeps/heads_depth.py \
      --workdir=runs/hd [--parallel=2] [--dry_run]

A sweep file is plain Python with `get_sweep(hyper)` returning a list of trials, each a dict of
config overrides, built with `hyper.sweep`, `hyper.product`, `hyper.zip` and `hyper.fixed`
(after big_vision's get_hyper). Each trial's workdir is named after its overrides. Rerunning
skips finished trials and resumes interrupted ones from their checkpoints; a failing trial is
reported and the others go on. Results: <workdir>/results.csv, results.md and results.png.
"""

import concurrent.futures
import csv
import importlib.util
import itertools
import json
import os
import shlex
import subprocess
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.abspath(__file__))
DONE = 'trial_result.json'


class hyper:  # pylint: disable=invalid-name
  """Helpers that build lists of override dicts."""

  @staticmethod
  def sweep(name, values):
    """One override per value: [{name: v1}, {name: v2}, ...]."""
    return [{name: v} for v in values]

  @staticmethod
  def fixed(name, value):
    return [{name: value}]

  @staticmethod
  def product(lists):
    """Every combination (the first list varies slowest)."""
    return [dict(kv for d in combo for kv in d.items()) for combo in itertools.product(*lists)]

  @staticmethod
  def zip(lists):
    """Element-wise: the i-th trial merges the i-th entry of every list."""
    lengths = {len(x) for x in lists}
    if len(lengths) != 1:
      raise ValueError(f'hyper.zip needs lists of one length, got lengths {sorted(lengths)}.')
    return [dict(kv for d in combo for kv in d.items()) for combo in zip(*lists)]


def load_sweep(path):
  if not os.path.isfile(path):
    sys.exit(f'error: sweep file not found: {path}')
  spec = importlib.util.spec_from_file_location('sweep_file', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  trials = module.get_sweep(hyper)
  for trial in trials:
    for key in trial:
      if not key.startswith('config.'):
        sys.exit(f'error: sweep override {key!r} must start with "config."')
  return trials


def trial_name(overrides, varying=None):
  """Readable directory name from the overrides that vary across the sweep:
  num_heads=4,num_encoder_layers=2 (all overrides when `varying` is None)."""
  parts = [
    f'{k[len("config.") :]}={v}' for k, v in overrides.items() if varying is None or k in varying
  ]
  return ','.join(parts).replace('/', '_').replace(' ', '') or 'base'


def varying_keys(trials):
  keys = {k for t in trials for k in t}
  return {k for k in keys if len({repr(t.get(k)) for t in trials}) > 1}


def commands(overrides, trial_dir):
  flags_ = [f'--{k}={v}' for k, v in overrides.items()]
  train_cmd = [
    sys.executable,
    os.path.join(ROOT, 'train.py'),
    f'--config={FLAGS.config}',
    f'--workdir={trial_dir}',
    *flags_,
  ]
  eval_cmd = [
    sys.executable,
    os.path.join(ROOT, 'eval.py'),
    f'--workdir={trial_dir}',
    *shlex.split(FLAGS.eval_args),
  ]
  return train_cmd, eval_cmd


def run_trial(overrides, trial_dir):
  """Train (resuming if interrupted) then evaluate; returns the result dict."""
  done = os.path.join(trial_dir, DONE)
  if os.path.exists(done):
    with open(done) as f:
      return {**json.load(f), 'status': 'done (skipped)'}
  os.makedirs(trial_dir, exist_ok=True)
  train_cmd, eval_cmd = commands(overrides, trial_dir)
  start = time.time()
  for name, cmd in (('train', train_cmd), ('eval', eval_cmd)):
    with open(os.path.join(trial_dir, f'{name}.log'), 'a') as log:
      code = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if code:
      return {
        'overrides': overrides,
        'status': f'{name} failed (exit {code}); see {trial_dir}/{name}.log',
      }
  reports = sorted(
    (
      os.path.join(trial_dir, 'eval', f)
      for f in os.listdir(os.path.join(trial_dir, 'eval'))
      if f.endswith('.json')
    ),
    key=os.path.getmtime,
  )
  with open(reports[-1]) as f:
    scores = {k: v for k, v in json.load(f).items() if isinstance(v, (int, float))}
  with open(os.path.join(trial_dir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  train_metrics = [r for r in records if 'train/loss' in r]
  result = {
    'overrides': overrides,
    'scores': scores,
    'minutes': (time.time() - start) / 60,
    'final_train_loss': train_metrics[-1]['train/loss'] if train_metrics else None,
  }
  with open(done, 'w') as f:
    json.dump(result, f, indent=2)
  return {**result, 'status': 'done'}


def write_results(results, workdir, metric):
  keys = list(dict.fromkeys(k for r in results for k in r['overrides']))  # sweep-file order
  score_keys = sorted({k for r in results for k in r.get('scores', {})} - {'beam_size'})
  rows = []
  for r in results:
    row = {k[len('config.') :]: r['overrides'].get(k, '') for k in keys}
    row.update({k: r.get('scores', {}).get(k, '') for k in score_keys})
    row.update({'minutes': r.get('minutes', ''), 'status': r['status']})
    rows.append(row)
  with open(os.path.join(workdir, 'results.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  columns = list(rows[0])
  fmt = lambda v: f'{v:.2f}' if isinstance(v, float) else str(v)
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(fmt(row[c]) for c in columns) + ' |' for row in rows]
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  plot(results, keys, metric, os.path.join(workdir, 'results.png'))
  return '\n'.join(lines)


def plot(results, keys, metric, path):
  """Metric against the first field that varies (in the sweep file's order), one line per
  value of the second."""
  done = [r for r in results if metric in r.get('scores', {})]
  if not done or not keys:
    return
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  x_key, line_key = keys[0], (keys[1] if len(keys) > 1 else None)
  varying = [k for k in keys if len({str(r['overrides'].get(k)) for r in done}) > 1]
  if varying:
    x_key = varying[0]
    line_key = varying[1] if len(varying) > 1 else None
  fig, ax = plt.subplots(figsize=(5, 3.5))
  groups = sorted({r['overrides'].get(line_key) for r in done}, key=str) if line_key else [None]
  for group in groups:
    points = sorted(
      (r['overrides'][x_key], r['scores'][metric])
      for r in done
      if line_key is None or r['overrides'].get(line_key) == group
    )
    label = f'{line_key[len("config.") :]}={group}' if line_key else None
    ax.plot([p[0] for p in points], [p[1] for p in points], marker='o', label=label)
  ax.set_xlabel(x_key[len('config.') :])
  ax.set_ylabel(metric)
  if line_key:
    ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def define_flags():
  """Command-line flags (only when run as a script: tests and benchmarks import this module)."""
  flags.DEFINE_string('config', 'configs/default.py', 'Base config (train.py --config).')
  flags.DEFINE_string('sweep', None, 'Sweep file with get_sweep(hyper).')
  flags.DEFINE_string('workdir', None, 'Sweep directory; one subdirectory per trial.')
  flags.DEFINE_integer('parallel', 1, 'Trials run at once.')
  flags.DEFINE_bool('dry_run', False, 'Print one train+eval command per trial and exit.')
  flags.DEFINE_string('eval_args', '', 'Extra eval.py flags, e.g. "--beam_size=1".')
  flags.DEFINE_string('metric', None, 'Metric for the plot (default: bleu or rouge1).')


def main(argv):
  del argv
  if not FLAGS.sweep or not FLAGS.workdir:
    sys.exit('error: --sweep and --workdir are required.')
  if FLAGS.parallel < 1:
    sys.exit(f'error: --parallel={FLAGS.parallel} must be >= 1.')
  trials = load_sweep(FLAGS.sweep)
  varying = varying_keys(trials)
  names = [trial_name(t, varying) for t in trials]
  if len(set(names)) != len(names):
    sys.exit('error: the sweep has duplicate trials (same overrides twice).')
  dirs = [os.path.join(os.path.abspath(FLAGS.workdir), name) for name in names]
  if FLAGS.dry_run:
    for overrides, trial_dir in zip(trials, dirs):
      train_cmd, eval_cmd = commands(overrides, trial_dir)
      print(shlex.join(train_cmd) + ' && ' + shlex.join(eval_cmd))
    return
  os.makedirs(FLAGS.workdir, exist_ok=True)
  print(f'{len(trials)} trials, {FLAGS.parallel} at a time, in {FLAGS.workdir}', flush=True)
  results = [None] * len(trials)
  with concurrent.futures.ThreadPoolExecutor(FLAGS.parallel) as pool:
    futures = {pool.submit(run_trial, t, d): i for i, (t, d) in enumerate(zip(trials, dirs))}
    for future in concurrent.futures.as_completed(futures):
      i = futures[future]
      results[i] = future.result()
      scores = results[i].get('scores', {})
      shown = ' '.join(
        f'{k}={v:.2f}'
        for k, v in scores.items()
        if k in ('bleu', 'tok_lc_bleu', 'chrf', 'rouge1', 'rouge2', 'rougeLsum')
      )
      print(f'[{i + 1}/{len(trials)}] {names[i]}: {results[i]["status"]} {shown}', flush=True)
  metric = FLAGS.metric or (
    'rouge1' if any('rouge1' in r.get('scores', {}) for r in results) else 'bleu'
  )
  print(write_results(results, FLAGS.workdir, metric))
  failed = [r for r in results if 'failed' in r['status']]
  if failed:
    print(f'{len(failed)} trial(s) failed; rerun the same command to retry them.')


if __name__ == '__main__':
  define_flags()
  app.run(main)
