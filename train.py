r"""Train an encoder-decoder Transformer: jit-compiled, sharded over a device mesh, resumable.

  python train.py --config=configs/default.py --workdir=runs/x [--config.num_heads=8 ...]

Rerunning the same command resumes from the latest checkpoint in the workdir (parameters,
optimizer state, step and the data iterator's position). The workdir receives config.json,
tokenizer.model, checkpoints/, metrics.jsonl and TensorBoard event files; eval.py needs only it.
Several processes (multi-host): pass --coordinator_address/--num_processes/--process_id, or
--distributed on TPU pods and SLURM where JAX detects them itself.
"""

import os
import re
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # TensorFlow (tfds) start-up banners

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from core import parallel  # noqa: E402
from core.config import ConfigError  # noqa: E402
from core.workdir import DiskFullError  # noqa: E402
from input_pipeline import datasets  # noqa: E402
from training.trainer import train_and_evaluate  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  config_flags.DEFINE_config_file(
    'config', 'configs/default.py', 'Training configuration.', lock_config=True
  )
  flags.DEFINE_string('workdir', None, 'Output directory (checkpoints, logs); may be gs://.')
  parallel.define_process_flags()
  flags.DEFINE_bool(
    'prepare_only',
    False,
    'Check the config and data, build the vocabulary '
    '(tokenizer.model) and config.json in --workdir, and exit without training: '
    'runs that must share one vocabulary (an ensemble) copy it from there.',
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS.workdir:
    sys.exit('error: --workdir is required (the output directory of the run).')
  logging.set_verbosity(logging.WARNING)  # orbax INFO lines drown the progress lines
  parallel.initialize_processes(FLAGS)
  config = FLAGS.config
  try:
    config.get('seed')  # a config file that failed to load raises here, at its first use
  except OSError as e:
    reason = [line.strip() for line in str(e).splitlines() if line.strip()][-1]
    sys.exit(f'error: --config could not be loaded: {reason}')
  try:
    train_and_evaluate(config, FLAGS.workdir, FLAGS.prepare_only)
  except (ConfigError, datasets.DataError, FloatingPointError, DiskFullError) as e:
    sys.exit(f'error: {e}')


def unknown_field(error) -> str:
  """One line for an unknown --config.field, with ml_collections' suggestion if it has one."""
  text = str(error).replace('\\n', ' ').replace("\\'", "'")
  names = re.findall(r"'(\w+)'", text)
  hint = re.search(r'Did you mean "(\w+)"', text)
  return f'error: --config.{names[0] if names else "?"} is not a config field' + (
    f'; did you mean --config.{hint.group(1)}?' if hint else '.'
  )


def parse_flags(argv):
  """absl flag parsing, with an unknown --config.field as one line instead of a traceback."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'FATAL Flags parsing error: {e}')
  except (AttributeError, KeyError) as e:
    sys.exit(unknown_field(e))


if __name__ == '__main__':
  try:
    define_flags()  # ml_collections applies --config.x overrides here, from sys.argv
  except (AttributeError, KeyError) as e:
    sys.exit(unknown_field(e))
  app.run(main, flags_parser=parse_flags)
