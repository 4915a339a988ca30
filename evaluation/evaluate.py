"""What eval.py runs: decode and score a split, translate lines, draw attention maps."""

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from core.config import check_decoding
from core.parallel import BATCH_AXES
from evaluation import EvalError
from evaluation.decode import decode_length, decode_texts, make_decode_fn
from evaluation.metrics import rouge_scores, translation_scores
from input_pipeline import batching, datasets
from input_pipeline import tokenizer as tokenizer_lib
from model.common import shift_right

# eval.py flags that override a decoding constraint of the config (0: off)
CONSTRAINT_FLAGS = {
  'min_len': 'min_decode_len',
  'min_words': 'min_decode_words',
  'no_repeat_ngram': 'no_repeat_ngram_size',
}
# eval.py flags that override a decoding field of the run's config -> that field (and --mbr)
DECODING_FLAGS = {
  **CONSTRAINT_FLAGS,
  'beam_size': 'beam_size',
  'alpha': 'length_penalty',
  'average_last': 'average_last',
  'mbr_temperature': 'mbr_temperature',
  'batch_size': 'eval_batch_size',
}


def apply_decoding_flags(config, values: dict, mbr=None):
  """The run's config with the decoding flags that were given (`values`: flag -> value or None;
  `mbr`: --mbr or None) in place of its fields, checked once (`check_decoding`). Greedy
  decoding (beam size 1) has no n-best, so it turns MBR off unless --mbr asks for it."""
  config.update({DECODING_FLAGS[f]: v for f, v in values.items() if v is not None})
  if mbr is not None:
    config.mbr_utility = '' if mbr == 'none' else mbr
  elif config.beam_size == 1:
    config.mbr_utility = ''
  check_decoding(config)
  return config


def report_lines(report, run) -> list:
  """What eval.py prints for decoded examples: the setting, each score (with its signature),
  and where the hypotheses are."""
  config, steps = run.config, run.steps
  averaged = f', average of {len(steps)} checkpoints {steps}' if len(steps) > 1 else ''
  averaged += ', moving average of the parameters' if run.ema else ''
  averaged += f', ensemble with {",".join(run.ensemble)}' if run.ensemble else ''
  settings = ''.join(
    f', {flag} {config[field]}' for flag, field in CONSTRAINT_FLAGS.items() if config[field]
  )
  if config.mbr_utility:
    settings += f', MBR {config.mbr_utility} (temperature {config.mbr_temperature:g})'
  lines = [
    f'{report["split"]}: {report["num_examples"]} examples, beam {report["beam_size"]}, alpha '
    f'{report["alpha"]}{settings}, step {steps[-1]}{averaged}; decoded in '
    f'{report["decode_seconds"]:.1f} s'
  ]
  for key, value in report.items():
    if isinstance(value, float) and key not in ('alpha', 'decode_seconds', 'mbr_temperature'):
      lines.append(f'  {key:16s} {value:6.2f}  {report.get(f"{key}_signature", "")}')
  return lines + [f'hypotheses: {report["hypotheses"]}']


def batch_sharding(run):
  """Decoding batches split over the run's mesh's batch axes (every device of every process
  that does not split the parameters by 'tensor')."""
  return NamedSharding(run.mesh, P(BATCH_AXES))


def output_name(run, name: str) -> str:
  """The file stem of a decoding's outputs: what was decoded and how, e.g.
  'val.step11000.avg10.beam20.alpha1.5.mbr-bleu.t0.15'."""
  config, steps = run.config, run.steps
  short = {'min_len': 'min', 'min_words': 'minw', 'no_repeat_ngram': 'norep'}
  members = 1 + len(run.ensemble)
  return (
    f'{name}.step{steps[-1]}'
    + (f'.avg{len(steps)}' if len(steps) > 1 else '')
    + ('.ema' if run.ema else '')
    + (f'.ens{members}' if members > 1 else '')
    + f'.beam{config.beam_size}'
    + (f'.alpha{config.length_penalty:g}' if config.beam_size > 1 else '')
    + ''.join(
      f'.{short[flag]}{config[field]}' for flag, field in CONSTRAINT_FLAGS.items() if config[field]
    )
    + (f'.mbr-{config.mbr_utility}.t{config.mbr_temperature:g}' if config.mbr_utility else '')
  )


def examples_to_score(config, split=None, eval_files=None, file_format=None):
  """(examples, name) that eval.py scores: a split of the run's dataset (default:
  config.eval_split), or the user's `eval_files` in `file_format` (default: the run's
  config.file_format; the run's source_key/target_key for JSON lines), named by its file."""
  if not eval_files:
    split = split or config.eval_split
    return datasets.load_examples(config, split)[0], split
  files = config.copy_and_resolve_references()
  files.update(
    dataset='files', eval_files=eval_files, file_format=file_format or config.file_format
  )
  return datasets.load_examples(files, 'eval')[0], epath.Path(eval_files.split(',')[0]).name


def evaluate_examples(run, examples, name: str):
  """Decode the examples' sources at the run's config decoding and score the outputs with the
  task's metrics; hypotheses and report go to <workdir>/eval/<output_name>.{txt,json}."""
  config, tok = run.config, run.tok
  sources = tok.encode([e['source'] for e in examples])
  too_long = sum(len(s) > config.max_eval_len for s in sources)
  if too_long:
    print(
      f'warning: {too_long} sources longer than max_eval_len={config.max_eval_len} are truncated',
      file=sys.stderr,
    )
  start = time.time()
  hypotheses = decode_texts(
    sources,
    config,
    tok,
    run.graphdef,
    run.params,
    run.rest,
    config.beam_size,
    config.length_penalty,
    config.eval_batch_size,
    batch_sharding(run),
  )
  seconds = time.time() - start
  if config.task == 'summarization':
    scores = rouge_scores(hypotheses, examples)
  else:
    scores = translation_scores(hypotheses, examples, config.target_lang)
  out_dir = epath.Path(run.workdir) / 'eval'
  stem = out_dir / output_name(run, name)
  report = {
    'split': name,
    'steps': run.steps,
    'ema': run.ema,
    'members': 1 + len(run.ensemble),
    'beam_size': config.beam_size,
    'alpha': config.length_penalty,
    'mbr_utility': config.mbr_utility,
    'mbr_temperature': config.mbr_temperature,
    'num_examples': len(examples),
    'decode_seconds': seconds,
    'hypotheses': str(stem) + '.txt',
    **scores,
  }
  if jax.process_index() == 0:  # every process decoded its share; one writes
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f'{stem.name}.txt').write_text('\n'.join(hypotheses) + '\n')
    (out_dir / f'{stem.name}.json').write_text(json.dumps(report, indent=2))
  return report


def read_input_lines(path: str) -> list:
  """The lines of a UTF-8 text file, or of standard input for '-', without newlines."""
  data = sys.stdin.buffer.read() if path == '-' else epath.Path(path).read_bytes()
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError as e:
    line = data[: e.start].count(b'\n') + 1
    raise EvalError(
      f'--input={path}: line {line} is not UTF-8 text ({e.reason}); give plain text, one '
      f'sentence per line.'
    ) from None
  lines = text.split('\n')
  return lines[:-1] if lines and lines[-1] == '' else lines


def translate_lines(run, lines):
  """Decode user lines; an empty line gives an empty line, so outputs stay aligned."""
  config, tok = run.config, run.tok
  keep = [i for i, line in enumerate(lines) if line.strip()]
  sources = tok.encode([datasets.model_text(config, lines[i]) for i in keep])
  for i, s in zip(keep, sources):
    if len(s) > config.max_eval_len:
      print(
        f'warning: line {i + 1} has {len(s)} tokens, more than max_eval_len='
        f'{config.max_eval_len}; decoding its first {config.max_eval_len}.',
        file=sys.stderr,
      )
  outputs = [''] * len(lines)
  if sources:
    sharding = batch_sharding(run)
    decoding = (config.beam_size, config.length_penalty, config.eval_batch_size, sharding)
    for i, text in zip(
      keep, decode_texts(sources, config, tok, run.graphdef, run.params, run.rest, *decoding)
    ):
      outputs[i] = text
  return outputs


def attention_maps(run, sentence):
  """Decode `sentence` with one model; return (source pieces, output pieces, encoder
  self-attention [layers][heads, src, src], cross-attention [layers][heads, out, src])."""
  config, tok = run.config, run.tok
  source = batching.truncate(
    tok.encode([datasets.model_text(config, sentence)])[0], config.max_eval_len
  )[None]
  decode_fn = make_decode_fn(
    run.graphdef, run.rest, config, tok, config.beam_size, config.length_penalty
  )
  max_len = decode_length(config, source.shape[1])
  out = np.asarray(decode_fn(run.params, source, max_len=max_len))[0]
  length = (
    int(np.argmax(out == tokenizer_lib.EOS_ID)) + 1
    if (out == tokenizer_lib.EOS_ID).any()
    else len(out)
  )
  target = out[None, :length]
  model = nnx.merge(run.graphdef, run.params, run.rest)
  encoded, enc_weights = model.encode(jnp.asarray(source), return_weights=True)
  _, dec_weights = model.decode(
    encoded, jnp.asarray(source), shift_right(jnp.asarray(target)), return_weights=True
  )
  return (
    tok.pieces(source[0]),
    tok.pieces(target[0]),
    [np.asarray(w[0]) for w in enc_weights],
    [np.asarray(w[0]) for w in dec_weights],
  )


def plot_attention(src_pieces, out_pieces, enc_weights, cross_weights, path: str):
  """One row per layer: cross-attention heads, then encoder self-attention heads (a recurrent
  encoder has none)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  layers = max(len(cross_weights), len(enc_weights))
  panels = [[] for _ in range(layers)]  # per layer: (weights, row labels, title)
  for name, per_layer, rows in (
    ('cross', cross_weights, out_pieces),
    ('encoder self', enc_weights, src_pieces),
  ):
    for layer, weights in enumerate(per_layer):
      panels[layer] += [
        (w, rows, f'{name} L{layer + 1} H{head + 1}') for head, w in enumerate(weights)
      ]
  columns = max(map(len, panels))
  fig, axes = plt.subplots(
    layers,
    columns,
    squeeze=False,
    figsize=(
      columns * (1.2 + 0.28 * len(src_pieces)),
      layers * (1.2 + 0.28 * max(len(out_pieces), len(src_pieces))),
    ),
  )
  for layer, row in enumerate(panels):
    for column in range(columns):
      ax = axes[layer][column]
      if column >= len(row):
        ax.axis('off')
        continue
      weights, rows, title = row[column]
      ax.imshow(weights, cmap='viridis', vmin=0.0, vmax=1.0)
      ax.set_xticks(range(len(src_pieces)), src_pieces, rotation=90, fontsize=7)
      ax.set_yticks(range(len(rows)), rows, fontsize=7)
      ax.set_title(title, fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
