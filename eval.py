r"""Evaluate a trained run: decode a split and score it, translate your own text, plot attention.

  python eval.py --workdir=runs/x --split=test_2016_flickr [--beam_size=4 --alpha=0.6]
                 [--step=N | --average_last=K] [--ema]
  python eval.py --workdir=runs/x --ensemble=runs/y,runs/z --split=...  # 3 models as one
  python eval.py --workdir=runs/x --eval_files=test.tsv         # score your own test set
  python eval.py --workdir=runs/x --input=my_sentences.txt      # or --input=- (stdin)
  python eval.py --workdir=runs/x --mesh=data:1,fsdp:8 ...     # default: the run's config.mesh
  python eval.py --workdir=runs/x --plot_attention="A dog runs across the field." \
                 --output=attn.png

Everything comes from the workdir: config.json, tokenizer.model and checkpoints/; decoding
flags default to the run's config fields. Scores:
translation: SacreBLEU (cased, with its signature) and chrF, plus, where the dataset ships
tokenized lowercased references (Multi30k tok/), the tokenized lowercased BLEU most Multi30k
papers report (hypotheses lowercased, Moses-punctuation-normalised and Moses-tokenised like the
references, then BLEU without further tokenisation, i.e. multi-bleu.perl);
summarization: ROUGE-1/2/Lsum F1 (rouge-score, Porter stemming), best over all references, plus
the mean over the references and the score against the target alone (suffixes _mean, _target).
An ensemble (--ensemble) decodes with the mean of its members' next-token probabilities; the
members share --workdir's vocabulary (train them from a copy of its tokenizer.model) and each
restores its own --step / --average_last checkpoints; outputs go to --workdir's eval/.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # TensorFlow (tfds) start-up banners

from absl import app, flags, logging  # noqa: E402

from core import parallel  # noqa: E402
from core.config import ConfigError  # noqa: E402
from core.metrics_log import MetricsLog  # noqa: E402
from evaluation import EvalError  # noqa: E402
from evaluation import evaluate as ev  # noqa: E402
from evaluation.metrics import annotator_scores  # noqa: E402
from evaluation.runs import load_run, restore  # noqa: E402
from input_pipeline import datasets  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string('workdir', None, "A training run's workdir.")
  flags.DEFINE_string('split', None, 'Split to decode and score (default: config.eval_split).')
  flags.DEFINE_string('eval_files', None, 'Score these files of yours instead of a split.')
  flags.DEFINE_string('file_format', None, '--eval_files format (default: config.file_format).')
  # decoding: each defaults to the run's config field (evaluation.evaluate.DECODING_FLAGS)
  flags.DEFINE_integer('beam_size', None, 'Beam size (config.beam_size); 1 = greedy.')
  flags.DEFINE_float('alpha', None, 'GNMT length penalty (config.length_penalty).')
  flags.DEFINE_integer('min_len', None, 'At least this many tokens (config.min_decode_len).')
  flags.DEFINE_integer('min_words', None, 'At least this many words (config.min_decode_words).')
  flags.DEFINE_integer('no_repeat_ngram', None, 'No n-gram twice (config.no_repeat_ngram_size).')
  flags.DEFINE_string('mbr', None, 'bleu | chrf | rouge | none: MBR utility (config.mbr_utility).')
  flags.DEFINE_float(
    'mbr_temperature', None, 'MBR weights exp(score / T) (config.mbr_temperature).'
  )
  flags.DEFINE_integer(
    'average_last', None, 'Mean of the last K checkpoints (config.average_last).'
  )
  flags.DEFINE_integer('batch_size', None, 'Sentences per batch (config.eval_batch_size).')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_list('ensemble', [], 'Workdirs of more runs to decode with as one ensemble.')
  flags.DEFINE_bool('ema', False, 'Decode with the moving average of the parameters.')
  flags.DEFINE_string(
    'mesh', None, "Device mesh, e.g. 'data:-1' (config.mesh): parameters split as in training."
  )
  # other modes
  flags.DEFINE_string('input', None, 'Translate/summarise lines of this file (- for stdin).')
  flags.DEFINE_string('plot_attention', None, 'Sentence whose attention maps to draw.')
  flags.DEFINE_string('output', 'attention.png', 'Image path for --plot_attention.')
  flags.DEFINE_bool('score_annotations', False, "Score a split's human annotations; no decoding.")
  parallel.define_process_flags()  # every process decodes its share of each batch


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  if not FLAGS.workdir:
    sys.exit('error: --workdir is required.')
  parallel.initialize_processes(FLAGS)
  say = MetricsLog.print_main  # process 0 prints and writes
  try:
    config, tok = load_run(FLAGS.workdir)
    values = {flag: FLAGS[flag].value for flag in ev.DECODING_FLAGS}
    config = ev.apply_decoding_flags(config, values, FLAGS.mbr)
    if FLAGS.ensemble and FLAGS.plot_attention is not None:
      raise EvalError("--plot_attention draws one model's attention; drop --ensemble.")
    if FLAGS.score_annotations:
      examples, _ = ev.examples_to_score(config, FLAGS.split)
      for key, value in annotator_scores(examples).items():
        say(f'  {key:16s} {value:6.2f}')
      return
    if FLAGS.input is not None:  # inputs are read and checked before anything is restored
      lines = ev.read_input_lines(FLAGS.input)
    elif FLAGS.plot_attention is None:
      examples, name = ev.examples_to_score(
        config, FLAGS.split, FLAGS.eval_files, FLAGS.file_format
      )
    run = restore(FLAGS.workdir, config, tok, FLAGS.step, FLAGS.ensemble, FLAGS.ema, FLAGS.mesh)
    if FLAGS.input is not None:
      for line in ev.translate_lines(run, lines):
        say(line)
      return
    if FLAGS.plot_attention is not None:
      maps = ev.attention_maps(run, FLAGS.plot_attention)
      ev.plot_attention(*maps, FLAGS.output)
      say(f'output: {tok.sp.decode(maps[1])}\nattention maps written to {FLAGS.output}')
      return
    report = ev.evaluate_examples(run, examples, name)
  except (EvalError, ConfigError, datasets.DataError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
  say('\n'.join(ev.report_lines(report, run)))
  say(parallel.describe_placement(run.mesh, {'parameters': run.params}))
  decoding_flags = (*ev.DECODING_FLAGS, 'mbr', 'step', 'ensemble', 'ema', 'eval_files')
  if config.expected_result.startswith(f'{config.dataset} {name}: ') and all(
    FLAGS[f].value == FLAGS[f].default for f in decoding_flags
  ):
    say(f'expected for this config: {config.expected_result}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
