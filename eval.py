r"""Evaluate a trained run: decode a split and score it, translate your own text, plot attention.

  python eval.py --workdir=runs/x --split=test_2016_flickr [--beam_size=4 --alpha=0.6]
                 [--step=N | --average_last=K] [--ema]
  python eval.py --workdir=runs/x --ensemble=runs/y,runs/z --split=...  # 3 models as one
  python eval.py --workdir=runs/x --input=my_sentences.txt      # or --input=- (stdin)
  python eval.py --workdir=runs/x --plot_attention="A dog runs across the field." \
                 --output=attn.png

Everything comes from the workdir: config.json, tokenizer.model and checkpoints/. Scores:
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

from evaluation import EvalError  # noqa: E402
from evaluation.evaluate import (  # noqa: E402
  DECODING_FLAGS,
  apply_decoding_flags,
  attention_maps,
  evaluate_split,
  plot_attention,
  read_input_lines,
  report_lines,
  translate_lines,
)
from evaluation.metrics import annotator_scores  # noqa: E402
from evaluation.runs import load_ensemble, load_params, load_run  # noqa: E402
from input_pipeline import datasets  # noqa: E402
from training.checks import ConfigError  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_string('workdir', None, "A training run's workdir.")
  flags.DEFINE_string('split', None, 'Split to decode and score (default: config.eval_split).')
  flags.DEFINE_integer('beam_size', None, 'Beam size (default: config.beam_size); 1 = greedy.')
  flags.DEFINE_float('alpha', None, 'GNMT length penalty (default: config.length_penalty).')
  flags.DEFINE_integer(
    'min_len', None, 'Tokens before EOS at least (default: config.min_decode_len).'
  )
  flags.DEFINE_integer(
    'min_words',
    None,
    'Words (word-initial subwords) before EOS at least (default: config.min_decode_words).',
  )
  flags.DEFINE_integer(
    'no_repeat_ngram',
    None,
    'n > 0: never output an n-gram of subwords twice (default: config.no_repeat_ngram_size).',
  )
  flags.DEFINE_string(
    'mbr',
    None,
    'bleu | chrf | rouge: minimum Bayes risk choice among the '
    "beam's n-best with this utility; none: the beam's best (default: "
    'config.mbr_utility).',
  )
  flags.DEFINE_float(
    'mbr_temperature',
    None,
    'MBR weights exp(score / T); 0 = equal weights (default: config.mbr_temperature).',
  )
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_integer(
    'average_last',
    None,
    'Average the parameters of the last K checkpoints (default: config.average_last).',
  )
  flags.DEFINE_list(
    'ensemble',
    [],
    "Workdirs of more runs to decode with --workdir's as one "
    'ensemble (mean of the next-token probabilities; the same vocabulary).',
  )
  flags.DEFINE_bool(
    'ema',
    False,
    'Decode with the moving average of the parameters (a run trained with config.ema_decay > 0).',
  )
  flags.DEFINE_integer('batch_size', None, 'Sentences per batch (default: config.eval_batch_size).')
  flags.DEFINE_string('input', None, 'Translate/summarise lines of this file (- for stdin).')
  flags.DEFINE_string('plot_attention', None, 'Sentence whose attention maps to draw.')
  flags.DEFINE_bool(
    'score_annotations',
    False,
    "Decode nothing: score the split's human "
    'annotations against its other references (`annotator_scores`).',
  )
  flags.DEFINE_string('output', 'attention.png', 'Image path for --plot_attention.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  if not FLAGS.workdir:
    sys.exit('error: --workdir is required.')
  try:
    config, tok = load_run(FLAGS.workdir)
    values = {flag: FLAGS[flag].value for flag in DECODING_FLAGS}
    config = apply_decoding_flags(config, values, FLAGS.mbr)
    beam_size, alpha, average_last = config.beam_size, config.length_penalty, config.average_last
    batch_size = FLAGS.batch_size or config.eval_batch_size
    split = FLAGS.split or config.eval_split
    if FLAGS.input is None and FLAGS.plot_attention is None:
      known = datasets.splits_of(config)
      if known is not None and split not in known:  # before restoring anything
        raise EvalError(f'unknown split {split!r}; splits of {config.dataset}: {known}.')
    lines = None if FLAGS.input is None else read_input_lines(FLAGS.input)  # before restoring
    if FLAGS.score_annotations:
      for key, value in annotator_scores(datasets.load_examples(config, split)[0]).items():
        print(f'  {key:16s} {value:6.2f}')
      return
    if FLAGS.ensemble and FLAGS.plot_attention is not None:
      raise EvalError("--plot_attention draws one model's attention; drop --ensemble.")
    if FLAGS.ensemble:
      graphdef, params, rest, used = load_ensemble(
        config, tok, FLAGS.workdir, FLAGS.ensemble, FLAGS.step, average_last, FLAGS.ema
      )
    else:
      graphdef, params, rest, used = load_params(
        config, FLAGS.workdir, FLAGS.step, average_last, FLAGS.ema
      )
    if FLAGS.input is not None:
      for line in translate_lines(
        config, tok, graphdef, params, rest, beam_size, alpha, batch_size, lines
      ):
        print(line)
      return
    if FLAGS.plot_attention is not None:
      maps = attention_maps(
        config, tok, graphdef, params, rest, FLAGS.plot_attention, beam_size, alpha
      )
      plot_attention(*maps, FLAGS.output)
      print(f'output: {tok.sp.decode(maps[1])}\nattention maps written to {FLAGS.output}')
      return
    report, hyp_path = evaluate_split(
      config,
      tok,
      graphdef,
      params,
      rest,
      used,
      split,
      beam_size,
      alpha,
      batch_size,
      FLAGS.workdir,
      FLAGS.ema,
    )
  except (EvalError, ConfigError, datasets.DataError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
  print('\n'.join(report_lines(report, config, used, hyp_path, FLAGS.ema, FLAGS.ensemble)))
  decoding_flags = (*DECODING_FLAGS, 'mbr', 'step', 'ensemble', 'ema')
  if config.expected_result.startswith(f'{config.dataset} {split}: ') and all(
    FLAGS[f].value == FLAGS[f].default for f in decoding_flags
  ):
    print(f'expected for this config: {config.expected_result}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
