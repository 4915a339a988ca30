r"""Learning curves of a run from its metrics.jsonl: loss and validation BLEU against steps
and wall-clock minutes.

  python plot_curves.py --workdir=runs/default --output=docs/learning_curve.png
"""

import json
import os
import sys

from absl import app, flags

flags.DEFINE_string('workdir', None, 'A train.py workdir.')
flags.DEFINE_string('output', None, 'PNG path (default: <workdir>/learning_curve.png).')
FLAGS = flags.FLAGS


def read_metrics(workdir):
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    sys.exit(f'error: {path} not found; is {workdir} a train.py workdir?')
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot(records, output):
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  start = records[0]['time']
  train = [r for r in records if 'train/loss' in r]
  evals = [r for r in records if 'eval/nll' in r]
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  for ax, xkey, xlabel in (
    (axes[0], 'step', 'training step'),
    (axes[1], 'minutes', 'wall-clock minutes'),
  ):
    x = lambda rs: [r['step'] if xkey == 'step' else (r['time'] - start) / 60 for r in rs]
    ax.plot(
      x(train), [r['train/nll'] for r in train], label='train NLL', color='tab:blue', alpha=0.7
    )
    ax.plot(
      x(evals), [r['eval/nll'] for r in evals], label='validation NLL', color='tab:blue', marker='o'
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel('NLL per target token')
    ax.set_ylim(0, max(4.0, min(8.0, max(r['eval/nll'] for r in evals) if evals else 8.0)))
    ax.grid(alpha=0.3)
    if any('eval/bleu' in r for r in evals):
      twin = ax.twinx()
      twin.plot(
        x(evals),
        [r.get('eval/bleu', float('nan')) for r in evals],
        color='tab:red',
        marker='s',
        label='validation BLEU (greedy, subset)',
      )
      twin.set_ylabel('SacreBLEU', color='tab:red')
      lines = ax.get_legend_handles_labels()
      twin_lines = twin.get_legend_handles_labels()
      ax.legend(lines[0] + twin_lines[0], lines[1] + twin_lines[1], fontsize=8, loc='center right')
  fig.tight_layout()
  fig.savefig(output, dpi=90)
  plt.close(fig)


def main(argv):
  del argv
  if not FLAGS.workdir:
    sys.exit('error: --workdir is required.')
  output = FLAGS.output or os.path.join(FLAGS.workdir, 'learning_curve.png')
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  plot(read_metrics(FLAGS.workdir), output)
  print(f'wrote {output}')


if __name__ == '__main__':
  app.run(main)
