r"""Validation BLEU reached after given minutes of training wall time, for several runs.

  .venv/bin/python benchmarks/bleu_over_time.py --runs=transformer=runs/t,rnn=runs/r \
      --minutes=10,20,40,60 --output=docs/attention_vs_recurrence.png

For each run and each mark, the last checkpoint saved at or before that many minutes of
training (train/elapsed_minutes in metrics.jsonl, the clock the time budget runs on) is decoded
on the run's validation split with --beam_size and no MBR or averaging, and scored with the
run's metrics; the runs must keep those checkpoints (--config.keep_checkpoints). Prints a table
(minutes, step, BLEU per run) and plots BLEU against minutes. Decoding is not timed here.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_list('runs', None, 'label=workdir pairs.', required=True)
flags.DEFINE_list('minutes', ['10', '20', '40', '60'], 'Minutes of training wall time.')
flags.DEFINE_integer('beam_size', 5, 'Beam size of the decoding.')
flags.DEFINE_string('metric', 'tok_lc_bleu', 'The score to report and plot.')
flags.DEFINE_string('output', None, 'PNG path of the plot (none: no plot).')
FLAGS = flags.FLAGS

from core.checkpoints import Checkpoints  # noqa: E402
from evaluation import evaluate as ev  # noqa: E402
from evaluation.runs import load_run, restore  # noqa: E402


def elapsed_minutes(workdir):
  """step -> minutes of training at that step, from the logged steps of metrics.jsonl."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return {r['step']: r['train/elapsed_minutes'] for r in records if 'train/elapsed_minutes' in r}


def checkpoint_at(workdir, minutes, logged):
  """(step, minutes) of the last checkpoint at or before `minutes`, or None. A checkpoint's
  minutes are those of the first logged step at or after it (the last logged step for a
  final checkpoint after it): an upper bound, by at most one logging interval."""
  timed = []
  for step in Checkpoints(workdir, keep=1000).manager.all_steps():
    later = [s for s in logged if s >= step]
    at = logged[min(later)] if later else logged[max(logged)]
    if at <= minutes + 1e-6:
      timed.append((at, step))
  return max(timed)[::-1] if timed else None


def main(argv):
  del argv
  runs = dict(item.split('=', 1) for item in FLAGS.runs)
  marks = [float(m) for m in FLAGS.minutes]
  table = {}
  for label, workdir in runs.items():
    config, tok = load_run(workdir)
    config = ev.apply_decoding_flags(
      config, {'beam_size': FLAGS.beam_size, 'average_last': 1}, 'none'
    )
    logged = elapsed_minutes(workdir)
    examples, name = ev.examples_to_score(config)
    for mark in marks:
      found = checkpoint_at(workdir, mark, logged)
      if found is None:
        print(f'{label}: no checkpoint by minute {mark:g}')
        continue
      step, at = found
      report = ev.evaluate_examples(restore(workdir, config, tok, step), examples, name)
      table[label, mark] = (step, at, report[FLAGS.metric])
      print(f'{label:12s} {mark:4g} min: step {step} ({at:.1f} min) {report[FLAGS.metric]:.2f}')
  print(f'\n{FLAGS.metric} on validation, beam {FLAGS.beam_size}, one checkpoint, no MBR:')
  print('| minutes | ' + ' | '.join(f'{label} (step)' for label in runs) + ' |')
  print('|---' * (len(runs) + 1) + '|')
  for mark in marks:
    cells = [
      f'{table[label, mark][2]:.2f} ({table[label, mark][0]})' if (label, mark) in table else '-'
      for label in runs
    ]
    print(f'| {mark:g} | ' + ' | '.join(cells) + ' |')
  if FLAGS.output:
    import matplotlib  # pylint: disable=g-import-not-at-top

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label in runs:
      points = [(table[label, m][1], table[label, m][2]) for m in marks if (label, m) in table]
      ax.plot(*zip(*points), marker='o', label=label)
    ax.set_xlabel('minutes of training (wall time)')
    ax.set_ylabel(f'validation {FLAGS.metric}')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(FLAGS.output, dpi=100)
    print(f'plot written to {FLAGS.output}')


if __name__ == '__main__':
  app.run(main)
