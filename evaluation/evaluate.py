"""What eval.py runs: decode and score a split, translate lines, draw attention maps."""

import json
import sys
import time

import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from evaluation import EvalError
from evaluation.decode import decode_length, decode_texts, make_decode_fn
from evaluation.metrics import rouge_scores, translation_scores
from input_pipeline import batching, datasets
from input_pipeline import tokenizer as tokenizer_lib
from model.transformer import shift_right
from training.checks import check_decoding
from training.parallel import make_mesh

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


def report_lines(report, config, used_steps, hypotheses_path, ema=False, ensemble=()) -> list:
  """What eval.py prints for a decoded split: the setting, each score (with its signature),
  and where the hypotheses are."""
  averaged = (
    f', average of {len(used_steps)} checkpoints {used_steps}' if len(used_steps) > 1 else ''
  )
  averaged += ', moving average of the parameters' if ema else ''
  averaged += f', ensemble with {",".join(ensemble)}' if ensemble else ''
  settings = ''.join(
    f', {flag} {config[field]}' for flag, field in CONSTRAINT_FLAGS.items() if config[field]
  )
  if config.mbr_utility:
    settings += f', MBR {config.mbr_utility} (temperature {config.mbr_temperature:g})'
  lines = [
    f'{report["split"]}: {report["num_examples"]} examples, beam {report["beam_size"]}, alpha '
    f'{report["alpha"]}{settings}, step {used_steps[-1]}{averaged}; decoded in '
    f'{report["decode_seconds"]:.1f} s'
  ]
  for key, value in report.items():
    if isinstance(value, float) and key not in ('alpha', 'decode_seconds', 'mbr_temperature'):
      lines.append(f'  {key:16s} {value:6.2f}  {report.get(f"{key}_signature", "")}')
  return lines + [f'hypotheses: {hypotheses_path}']


def constraints_tag(config) -> str:
  """Output-file suffix naming the constraints in force, e.g. '.min2.norep2' ('' for none)."""
  short = {'min_len': 'min', 'min_words': 'minw', 'no_repeat_ngram': 'norep'}
  return ''.join(
    f'.{short[flag]}{config[field]}' for flag, field in CONSTRAINT_FLAGS.items() if config[field]
  )


def mbr_tag(config) -> str:
  """Output-file suffix for minimum Bayes risk selection, e.g. '.mbr-bleu.t0.15' ('' if off)."""
  utility = config.get('mbr_utility', '')
  return f'.mbr-{utility}.t{config.mbr_temperature:g}' if utility else ''


def check_mbr(config, beam_size):
  """Fails on an MBR setting that cannot run, before anything is restored or compiled."""
  utility = config.get('mbr_utility', '')
  if utility not in ('', 'bleu', 'chrf', 'rouge'):
    raise EvalError(f'--mbr={utility} is not one of bleu, chrf, rouge, none.')
  if utility and beam_size < 2:
    raise EvalError(
      f"--mbr={utility} chooses among the beam's hypotheses: set "
      f'--beam_size=2 or more (the Multi30k setting: 20).'
    )
  if config.get('mbr_temperature', 0.0) < 0:
    raise EvalError(f'--mbr_temperature={config.mbr_temperature} must be >= 0 (0: equal weights).')


def evaluate_split(
  config,
  tok,
  graphdef,
  params,
  rest,
  used_steps,
  split,
  beam_size,
  alpha,
  batch_size,
  workdir,
  ema=False,
):
  examples, _ = datasets.load_examples(config, split)
  sources = tok.encode([e['source'] for e in examples])
  too_long = sum(len(s) > config.max_eval_len for s in sources)
  if too_long:
    print(
      f'warning: {too_long} sources longer than max_eval_len={config.max_eval_len} are truncated',
      file=sys.stderr,
    )
  mesh = make_mesh()
  sharding = NamedSharding(mesh, P('data'))
  start = time.time()
  hypotheses = decode_texts(
    sources, config, tok, graphdef, params, rest, beam_size, alpha, batch_size, sharding
  )
  seconds = time.time() - start
  if config.get('task', 'translation') == 'summarization':
    scores = rouge_scores(hypotheses, examples)
  else:
    scores = translation_scores(hypotheses, examples, config.get('target_lang'))
  members = len(graphdef) if isinstance(graphdef, list) else 1
  tag = (
    f'{split}.step{used_steps[-1]}'
    + (f'.avg{len(used_steps)}' if len(used_steps) > 1 else '')
    + ('.ema' if ema else '')
    + (f'.ens{members}' if members > 1 else '')
    + f'.beam{beam_size}'
    + (f'.alpha{alpha:g}' if beam_size > 1 else '')
    + constraints_tag(config)
    + mbr_tag(config)
  )
  out_dir = epath.Path(workdir) / 'eval'
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / f'{tag}.txt').write_text('\n'.join(hypotheses) + '\n')
  report = {
    'split': split,
    'steps': used_steps,
    'ema': ema,
    'members': members,
    'beam_size': beam_size,
    'alpha': alpha,
    'mbr_utility': config.get('mbr_utility', ''),
    'mbr_temperature': config.get('mbr_temperature', 0.0),
    'num_examples': len(examples),
    'decode_seconds': seconds,
    **scores,
  }
  (out_dir / f'{tag}.json').write_text(json.dumps(report, indent=2))
  return report, str(out_dir / f'{tag}.txt')


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


def translate_lines(config, tok, graphdef, params, rest, beam_size, alpha, batch_size, lines):
  """Decode user lines; an empty line gives an empty line, so outputs stay aligned."""
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
    for i, text in zip(
      keep, decode_texts(sources, config, tok, graphdef, params, rest, beam_size, alpha, batch_size)
    ):
      outputs[i] = text
  return outputs


def attention_maps(config, tok, graphdef, params, rest, sentence, beam_size, alpha):
  """Decode `sentence`; return (source pieces, output pieces, encoder self-attention
  [layers][heads, src, src], cross-attention [layers][heads, out, src])."""
  source = batching.truncate(
    tok.encode([datasets.model_text(config, sentence)])[0], config.max_eval_len
  )[None]
  decode_fn = make_decode_fn(graphdef, rest, config, tok, beam_size, alpha)
  out = np.asarray(decode_fn(params, source, max_len=decode_length(config, source.shape[1])))[0]
  length = (
    int(np.argmax(out == tokenizer_lib.EOS_ID)) + 1
    if (out == tokenizer_lib.EOS_ID).any()
    else len(out)
  )
  target = out[None, :length]
  model = nnx.merge(graphdef, params, rest)
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
  """One row per layer: cross-attention heads, then encoder self-attention heads."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  layers, heads = len(cross_weights), cross_weights[0].shape[0]
  fig, axes = plt.subplots(
    layers,
    2 * heads,
    squeeze=False,
    figsize=(
      2 * heads * (1.2 + 0.28 * len(src_pieces)),
      layers * (1.2 + 0.28 * max(len(out_pieces), len(src_pieces))),
    ),
  )
  for layer in range(layers):
    for head in range(heads):
      for column, weights, rows, title in (
        (head, cross_weights[layer][head], out_pieces, 'cross'),
        (heads + head, enc_weights[layer][head], src_pieces, 'encoder self'),
      ):
        ax = axes[layer][column]
        ax.imshow(weights, cmap='viridis', vmin=0.0, vmax=1.0)
        ax.set_xticks(range(len(src_pieces)), src_pieces, rotation=90, fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_title(f'{title} L{layer + 1} H{head + 1}', fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
