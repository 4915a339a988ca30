r"""Export a trained run's decoding parameters as a small workdir of its own: parameters only
(no optimizer state), averaged over the run's config.average_last checkpoints, with its
config.json and tokenizer.model; eval.py decodes it like the run.

  python export.py --workdir=runs/default --output=pretrained/multi30k_en_de
  python eval.py --workdir=pretrained/multi30k_en_de --split=test_2016_flickr
"""

import sys

from absl import app, flags, logging

from evaluation import EvalError
from evaluation.runs import export_params

flags.DEFINE_string('workdir', None, "A training run's workdir.", required=True)
flags.DEFINE_string('output', None, 'A new directory for the exported run.', required=True)
flags.DEFINE_integer('step', None, 'The last checkpoint step to average (default: the latest).')
flags.DEFINE_integer('average_last', None, 'Average this many checkpoints (config.average_last).')
flags.DEFINE_bool('ema', False, 'Export the moving average of the parameters instead.')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  try:
    steps = export_params(FLAGS.workdir, FLAGS.output, FLAGS.step, FLAGS.average_last, FLAGS.ema)
  except EvalError as e:
    sys.exit(f'error: {e}')
  print(f'exported the mean of checkpoints {steps} of {FLAGS.workdir} to {FLAGS.output}')


if __name__ == '__main__':
  app.run(main)
