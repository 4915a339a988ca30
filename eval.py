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

import collections
import functools
import json
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # TensorFlow (tfds) start-up banners

from absl import app, flags, logging  # noqa: E402

FLAGS = flags.FLAGS

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import sacrebleu  # noqa: E402
from sacrebleu.metrics import helpers as sacrebleu_helpers  # noqa: E402
from etils import epath  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import train  # noqa: E402
from configs import default  # noqa: E402
from input_pipeline import batching, datasets, tokenizer as tokenizer_lib  # noqa: E402
from model import decoding  # noqa: E402
from model.transformer import shift_right  # noqa: E402


# config fields added after runs had been trained -> their values before they existed
FIELDS_ADDED_LATER = {'matmul_dtype': 'float32', 'qk_norm': 0.0, 'average_last': 1,
                      'expected_result': ''}
# config fields an ensemble's members must share: they fix what text the models read and write
SHARED_FIELDS = ('task', 'dataset', 'source_lang', 'target_lang', 'lowercase')
# eval.py flags that override a decoding constraint of the config (0: off)
CONSTRAINT_FLAGS = {'min_len': 'min_decode_len', 'min_words': 'min_decode_words',
                    'no_repeat_ngram': 'no_repeat_ngram_size'}


class EvalError(ValueError):
  """A missing run, checkpoint or split; the message says what to do."""


# ----------------------------------------------------------------------------- restoring a run


def load_run(workdir: str, flag: str = '--workdir'):
  """(config, tokenizer) of a training run's workdir (named by `flag` in errors)."""
  path = epath.Path(workdir)
  if not path.exists():
    raise EvalError(f'{flag}={workdir} does not exist; train first: python train.py '
                    f'--config=... --workdir={workdir}')
  if not (path / 'config.json').exists():
    raise EvalError(f'{workdir} holds no config.json: it is not a train.py workdir.')
  # A field the run's config.json lacks was added later: it takes the value that reproduces
  # the code of the time (FIELDS_ADDED_LATER), else today's default.
  config = default.get_config()
  config.update(FIELDS_ADDED_LATER)
  config.update(json.loads((path / 'config.json').read_text()))
  return config, tokenizer_lib.Tokenizer(str(path / tokenizer_lib.FILENAME))


def load_params(config, workdir: str, step=None, average_last: int = 1, ema: bool = False):
  """Parameters of one checkpoint, or the mean of the last K (Vaswani et al.'s averaging);
  ema: their exponential moving average instead (a run with config.ema_decay > 0).

  Returns (graphdef, params, rest, the steps used).
  """
  if ema and not config.ema_decay:
    raise EvalError(f'--ema: {workdir} kept no moving average (its config.ema_decay is 0); '
                    f'drop --ema, or train with --config.ema_decay=0.999.')
  graphdef, params, rest = train.create_model(config, 0)
  checkpoints = train.Checkpoints(workdir, keep=max(config.keep_checkpoints, average_last))
  steps = sorted(checkpoints.manager.all_steps())
  if not steps:
    raise EvalError(f'no checkpoint in {workdir}/checkpoints; train (longer) first.')
  if step is not None:
    if step not in steps:
      raise EvalError(f'--step={step} has no checkpoint in {workdir}; available: {steps}.')
    steps = [s for s in steps if s <= step]
  if average_last < 1:
    raise EvalError(f'--average_last={average_last} must be >= 1.')
  used = steps[-average_last:]
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  key = 'ema_params' if ema else 'params'
  restored = [jax.tree.map(jnp.asarray, checkpoints.restore_params(s, abstract, key))
              for s in used]
  # The mean in float32 on the device, as the scores in the README were computed: summed and
  # divided in NumPy instead, some parameters differ in the last bit, and so do a few beams.
  averaged = jax.tree.map(lambda *xs: sum(xs) / len(xs), *restored)
  return graphdef, averaged, rest, used


def load_ensemble(config, tok, workdir, members, step=None, average_last=1, ema=False):
  """`load_params` of --workdir and of each member workdir, after checking that the members
  read and write the same text with the same vocabulary.

  Returns lists (graphdefs, params, rests) in that order, and --workdir's steps used.
  """
  runs = [(config, workdir)]
  for member in members:
    member_config, member_tok = load_run(member, '--ensemble')
    if member_tok.vocabulary() != tok.vocabulary():
      raise EvalError(f'--ensemble: {member} has another vocabulary than {workdir}; members '
                      f'share one: copy {workdir}/{tokenizer_lib.FILENAME} into a new workdir '
                      f'before training it there.')
    for field in SHARED_FIELDS:
      if member_config.get(field) != config.get(field):
        raise EvalError(f'--ensemble: {member} has config.{field}={member_config.get(field)!r}, '
                        f'{workdir} {config.get(field)!r}; members must agree.')
    runs.append((member_config, member))
  loaded = [load_params(c, w, step, average_last, ema) for c, w in runs]
  graphdefs, params, rests, used = zip(*loaded)
  return list(graphdefs), list(params), list(rests), used[0]


def merge(graphdef, params, rest):
  """The model of nnx.split parts, or for lists of parts the `decoding.Ensemble` of them."""
  if isinstance(graphdef, list):
    return decoding.Ensemble([nnx.merge(*parts) for parts in zip(graphdef, params, rest)])
  return nnx.merge(graphdef, params, rest)


def constraints_tag(config) -> str:
  """Output-file suffix naming the constraints in force, e.g. '.min2.norep2' ('' for none)."""
  short = {'min_len': 'min', 'min_words': 'minw', 'no_repeat_ngram': 'norep'}
  return ''.join(f'.{short[flag]}{config[field]}' for flag, field in CONSTRAINT_FLAGS.items()
                 if config[field])


def mbr_tag(config) -> str:
  """Output-file suffix for minimum Bayes risk selection, e.g. '.mbr-bleu.t0.15' ('' if off)."""
  utility = config.get('mbr_utility', '')
  return f'.mbr-{utility}.t{config.mbr_temperature:g}' if utility else ''


def make_decode_fn(graphdef, rest, config, tok, beam_size: int, alpha: float, use_cache=True,
                   n_best=False):
  """jit-compiled batch decoder: (params, inputs, max_len) -> token ids [batch, max_len]
  (n_best: the beam's finished hypotheses and their scores, see `decoding.beam_search`);
  graphdef, params and rest may be lists (an ensemble's members, see `merge`)."""
  options = train.decoding_options(config, tok)

  @functools.partial(jax.jit, static_argnames=('max_len',))
  def decode(params, inputs, max_len):
    model = merge(graphdef, params, rest)
    kwargs = dict(max_len=max_len, use_cache=use_cache, **options)
    if beam_size == 1:
      return decoding.greedy_decode(model, inputs, **kwargs)
    out = decoding.beam_search(model, inputs, beam_size=beam_size, alpha=alpha,
                               groups=decoding.auto_beam_groups(config.beam_groups),
                               n_best=n_best, **kwargs)
    return out if n_best else out[0]
  return decode


def decode_all(sources, decode_fn, params, config, batch_size, sharding=None):
  """Decode every tokenized source (in order) -> list of decode_fn's rows (token id arrays,
  or for an n-best decode_fn (ids, scores) pairs)."""
  outputs = [None] * len(sources)
  for batch in batching.eval_batches(sources, batch_size, config.max_eval_len):
    inputs = batch['inputs']
    if sharding is not None:
      inputs = jax.make_array_from_process_local_data(sharding, train.process_rows(inputs))
    out = train.to_host(decode_fn(
        params, inputs, max_len=train.decode_length(config, batch['inputs'].shape[1])))
    for row, index in enumerate(batch['index']):
      if index >= 0:
        outputs[index] = jax.tree.map(lambda x, row=row: x[row], out)
  return outputs


def decode_texts(sources, config, tok, graphdef, params, rest, beam_size, alpha, batch_size,
                 sharding=None):
  """Decode tokenized sources -> output strings: each beam search's best, or with
  config.mbr_utility set, the minimum Bayes risk choice among its n-best (`mbr_select`)."""
  utility = config.get('mbr_utility', '')
  decode_fn = make_decode_fn(graphdef, rest, config, tok, beam_size, alpha, n_best=bool(utility))
  outputs = decode_all(sources, decode_fn, params, config, batch_size, sharding)
  if not utility:
    return [tok.decode(ids) for ids in outputs]
  texts = []
  for ids, scores in outputs:
    finished = scores > decoding.NEG_INF / 2  # slots no hypothesis reached are left out
    finished[0] = True
    texts.append(mbr_select([tok.decode(row) for row in ids[finished]], scores[finished],
                            utility, config.mbr_temperature))
  return texts


# ----------------------------------------------------------------------------- metrics


def moses_tok_lc(lines, lang: str):
  """Lowercase, normalise punctuation and Moses-tokenise, as Multi30k's tok/ references: with
  tokenizer.perl's XML escapes (" -> &quot;, ' -> &apos;), which those files carry."""
  from sacremoses import MosesPunctNormalizer, MosesTokenizer  # pylint: disable=g-import-not-at-top
  normalizer, tokenizer = MosesPunctNormalizer(lang), MosesTokenizer(lang)
  return [tokenizer.tokenize(normalizer.normalize(line.lower()), escape=True, return_str=True)
          for line in lines]


def translation_scores(hypotheses, examples, target_lang=None):
  refs = [e['references'][0] for e in examples]
  bleu = sacrebleu.metrics.BLEU()
  chrf = sacrebleu.metrics.CHRF()
  scores = {'bleu': bleu.corpus_score(hypotheses, [refs]).score,
            'bleu_signature': str(bleu.get_signature()),
            'chrf': chrf.corpus_score(hypotheses, [refs]).score,
            'chrf_signature': str(chrf.get_signature())}
  tok_refs = [e.get('tok_reference', '') for e in examples]
  if all(tok_refs) and target_lang:
    tok_bleu = sacrebleu.metrics.BLEU(tokenize='none', force=True)
    scores['tok_lc_bleu'] = tok_bleu.corpus_score(moses_tok_lc(hypotheses, target_lang),
                                                  [tok_refs]).score
  return scores


def pairwise_sentence_bleu(texts):
  """[n, n] sentence BLEU of texts[i] against texts[j] as the reference, x 100: SacreBLEU's
  sentence_score (13a tokens, exp smoothing, effective order), each text tokenised and its
  n-grams counted once instead of once per pair."""
  metric = sacrebleu.metrics.BLEU(effective_order=True)
  counted = [sacrebleu_helpers.extract_all_word_ngrams(metric.tokenizer(t.rstrip()), 1, 4)
             for t in texts]
  scores = np.zeros((len(texts), len(texts)))
  for i, (hyp, hyp_len) in enumerate(counted):
    for j, (ref, ref_len) in enumerate(counted):
      correct, total = [0] * 4, [0] * 4
      for ngram, count in hyp.items():
        total[len(ngram) - 1] += count
        correct[len(ngram) - 1] += min(count, ref.get(ngram, 0))
      scores[i, j] = metric.compute_bleu(correct, total, hyp_len, ref_len, metric.smooth_method,
                                         metric.smooth_value, effective_order=True).score
  return scores


def lcs_length(a, b) -> int:
  """Length of the longest common subsequence of two token lists (dynamic programming)."""
  row = [0] * (len(b) + 1)
  for x in a:
    diagonal = 0
    for j, y in enumerate(b):
      diagonal, row[j + 1] = row[j + 1], (diagonal + 1 if x == y
                                          else max(row[j + 1], row[j]))
  return row[-1]


def pairwise_rouge(texts):
  """[n, n] mean of ROUGE-1, ROUGE-2 and ROUGE-L F1 of texts[i] against texts[j] as the
  reference, x 100: rouge-score's formulas and tokens (Porter stemming), each text tokenised
  and its n-grams counted once instead of once per pair. ROUGE-L is over the whole text (the
  summary-level ROUGE-Lsum of one-line texts, as subject lines are). F1 is symmetric in
  hypothesis and reference, so each pair is scored once."""
  from rouge_score import tokenizers  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizers.DefaultTokenizer(use_stemmer=True)
  tokens = [tokenizer.tokenize(t) for t in texts]
  counts = [[collections.Counter(zip(*(toks[k:] for k in range(n)))) for n in (1, 2)]
            for toks in tokens]
  sizes = [(len(toks), max(len(toks) - 1, 0)) for toks in tokens]  # unigrams, bigrams

  def f1(overlap, hyp_total, ref_total):
    return 0.0 if overlap == 0 else 2 * overlap / (hyp_total + ref_total)

  scores = np.zeros((len(texts), len(texts)))
  for i in range(len(texts)):
    for j in range(i, len(texts)):
      total = sum(f1(sum((counts[i][n] & counts[j][n]).values()), sizes[i][n], sizes[j][n])
                  for n in (0, 1))
      total += f1(lcs_length(tokens[i], tokens[j]), sizes[i][0], sizes[j][0])
      scores[i, j] = scores[j, i] = 100 * total / 3
  return scores


def mbr_select(hypotheses, scores, utility='bleu', temperature=0.15):
  """Minimum Bayes risk decoding over an n-best list (Kumar and Byrne 2004): the hypothesis
  with the highest expected utility against the others taken as references, weighted by the
  model: argmax_i sum_j w_j u(h_i, h_j), w = softmax(scores / temperature) (equal weights for
  temperature 0). utility: bleu (sentence BLEU), chrf (sentence chrF) or rouge (the mean of
  ROUGE-1/2/L F1, `pairwise_rouge`)."""
  if utility == 'bleu':
    table = pairwise_sentence_bleu(hypotheses)
  elif utility == 'rouge':
    table = pairwise_rouge(hypotheses)
  elif utility == 'chrf':
    chrf = sacrebleu.metrics.CHRF()
    table = np.array([[chrf.sentence_score(h, [r]).score for r in hypotheses]
                      for h in hypotheses])
  else:
    raise EvalError(f'MBR utility {utility!r} is not one of bleu, chrf, rouge.')
  scores = np.asarray(scores, np.float64)
  weights = (np.ones_like(scores) if temperature == 0 else
             np.exp((scores - scores.max()) / temperature))
  return hypotheses[int(np.argmax(table @ (weights / weights.sum())))]


def rouge_scores(hypotheses, examples):
  """ROUGE-1/2/Lsum F1 x 100: for each example the best over its references (the headline
  figures), the mean over them ('_mean'), and against the target alone ('_target': for AESLC
  the original subject line, without the three annotations)."""
  return rouge_protocols(hypotheses, [e['references'] for e in examples],
                         [e['target'] for e in examples])


def rouge_protocols(hypotheses, references, targets):
  """`train.rouge` best over each hypothesis' references (''), their mean ('_mean') and
  against its target alone ('_target')."""
  scores = train.rouge(hypotheses, references)
  for suffix, refs, reduce in (('mean', references, 'mean'),
                               ('target', [[target] for target in targets], 'max')):
    scores.update({f'{name}_{suffix}': value
                   for name, value in train.rouge(hypotheses, refs, reduce).items()})
  return scores


def annotator_scores(examples):
  """The human scale for `rouge_scores`: each annotation (references[1:]) scored as the
  hypothesis against the other references, best ('') and mean ('_mean') over them, and against
  the target alone ('_target'), averaged over the annotators."""
  counts = {len(e['references']) for e in examples}
  if min(counts) < 2 or len(counts) > 1:
    raise EvalError(f'--score_annotations needs the same number (>= 2) of references for every '
                    f'example; this split has {sorted(counts)} (AESLC validation and test have '
                    f'4).')
  per_annotator = []
  for k in range(1, counts.pop()):
    per_annotator.append(rouge_protocols(
        [e['references'][k] for e in examples],
        [e['references'][:k] + e['references'][k + 1:] for e in examples],
        [e['target'] for e in examples]))
  return {key: float(np.mean([s[key] for s in per_annotator])) for key in per_annotator[0]}


# ----------------------------------------------------------------------------- modes


def evaluate_split(config, tok, graphdef, params, rest, used_steps, split, beam_size, alpha,
                   batch_size, workdir, ema=False):
  examples, _ = datasets.load_examples(config, split)
  sources = tok.encode([e['source'] for e in examples])
  too_long = sum(len(s) > config.max_eval_len for s in sources)
  if too_long:
    print(f'warning: {too_long} sources longer than max_eval_len={config.max_eval_len} are '
          f'truncated', file=sys.stderr)
  mesh = train.make_mesh()
  sharding = NamedSharding(mesh, P('data'))
  start = time.time()
  hypotheses = decode_texts(sources, config, tok, graphdef, params, rest, beam_size, alpha,
                            batch_size, sharding)
  seconds = time.time() - start
  if config.get('task', 'translation') == 'summarization':
    scores = rouge_scores(hypotheses, examples)
  else:
    scores = translation_scores(hypotheses, examples, config.get('target_lang'))
  members = len(graphdef) if isinstance(graphdef, list) else 1
  tag = (f'{split}.step{used_steps[-1]}' + (f'.avg{len(used_steps)}' if len(used_steps) > 1
                                            else '') + ('.ema' if ema else '')
         + (f'.ens{members}' if members > 1 else '')
         + f'.beam{beam_size}'
         + (f'.alpha{alpha:g}' if beam_size > 1 else '')
         + constraints_tag(config) + mbr_tag(config))
  out_dir = epath.Path(workdir) / 'eval'
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / f'{tag}.txt').write_text('\n'.join(hypotheses) + '\n')
  report = {'split': split, 'steps': used_steps, 'ema': ema, 'members': members,
            'beam_size': beam_size,
            'alpha': alpha, 'mbr_utility': config.get('mbr_utility', ''),
            'mbr_temperature': config.get('mbr_temperature', 0.0),
            'num_examples': len(examples), 'decode_seconds': seconds, **scores}
  (out_dir / f'{tag}.json').write_text(json.dumps(report, indent=2))
  return report, str(out_dir / f'{tag}.txt')


def translate_lines(config, tok, graphdef, params, rest, beam_size, alpha, batch_size, lines):
  """Decode user lines; an empty line gives an empty line, so outputs stay aligned."""
  keep = [i for i, line in enumerate(lines) if line.strip()]
  sources = tok.encode([datasets.model_text(config, lines[i]) for i in keep])
  for i, s in zip(keep, sources):
    if len(s) > config.max_eval_len:
      print(f'warning: line {i + 1} has {len(s)} tokens, more than max_eval_len='
            f'{config.max_eval_len}; decoding its first {config.max_eval_len}.', file=sys.stderr)
  outputs = [''] * len(lines)
  if sources:
    for i, text in zip(keep, decode_texts(sources, config, tok, graphdef, params, rest,
                                          beam_size, alpha, batch_size)):
      outputs[i] = text
  return outputs


def attention_maps(config, tok, graphdef, params, rest, sentence, beam_size, alpha):
  """Decode `sentence`; return (source pieces, output pieces, encoder self-attention
  [layers][heads, src, src], cross-attention [layers][heads, out, src])."""
  source = batching.truncate(tok.encode([datasets.model_text(config, sentence)])[0],
                             config.max_eval_len)[None]
  decode_fn = make_decode_fn(graphdef, rest, config, tok, beam_size, alpha)
  out = np.asarray(decode_fn(params, source, max_len=train.decode_length(config,
                                                                          source.shape[1])))[0]
  length = int(np.argmax(out == tokenizer_lib.EOS_ID)) + 1 if (
      out == tokenizer_lib.EOS_ID).any() else len(out)
  target = out[None, :length]
  model = nnx.merge(graphdef, params, rest)
  encoded, enc_weights = model.encode(jnp.asarray(source), return_weights=True)
  _, dec_weights = model.decode(encoded, jnp.asarray(source), shift_right(jnp.asarray(target)),
                                return_weights=True)
  return (tok.pieces(source[0]), tok.pieces(target[0]), [np.asarray(w[0]) for w in enc_weights],
          [np.asarray(w[0]) for w in dec_weights])


def plot_attention(src_pieces, out_pieces, enc_weights, cross_weights, path: str):
  """One row per layer: cross-attention heads, then encoder self-attention heads."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  layers, heads = len(cross_weights), cross_weights[0].shape[0]
  fig, axes = plt.subplots(layers, 2 * heads, squeeze=False,
                           figsize=(2 * heads * (1.2 + 0.28 * len(src_pieces)),
                                    layers * (1.2 + 0.28 * max(len(out_pieces), len(src_pieces)))))
  for layer in range(layers):
    for head in range(heads):
      for column, weights, rows, title in (
          (head, cross_weights[layer][head], out_pieces, 'cross'),
          (heads + head, enc_weights[layer][head], src_pieces, 'encoder self')):
        ax = axes[layer][column]
        ax.imshow(weights, cmap='viridis', vmin=0.0, vmax=1.0)
        ax.set_xticks(range(len(src_pieces)), src_pieces, rotation=90, fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set_title(f'{title} L{layer + 1} H{head + 1}', fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def check_mbr(config, beam_size):
  """Fails on an MBR setting that cannot run, before anything is restored or compiled."""
  utility = config.get('mbr_utility', '')
  if utility not in ('', 'bleu', 'chrf', 'rouge'):
    raise EvalError(f'--mbr={utility} is not one of bleu, chrf, rouge, none.')
  if utility and beam_size < 2:
    raise EvalError(f'--mbr={utility} chooses among the beam\'s hypotheses: set '
                    f'--beam_size=2 or more (the Multi30k setting: 20).')
  if config.get('mbr_temperature', 0.0) < 0:
    raise EvalError(f'--mbr_temperature={config.mbr_temperature} must be >= 0 (0: equal '
                    f'weights).')


def define_flags():
  """Command-line flags (only when run as a script: tests and benchmarks import this module)."""
  flags.DEFINE_string('workdir', None, 'A training run\'s workdir.')
  flags.DEFINE_string('split', None, 'Split to decode and score (default: config.eval_split).')
  flags.DEFINE_integer('beam_size', None, 'Beam size (default: config.beam_size); 1 = greedy.')
  flags.DEFINE_float('alpha', None, 'GNMT length penalty (default: config.length_penalty).')
  flags.DEFINE_integer('min_len', None, 'Tokens before EOS at least (default: '
                       'config.min_decode_len).')
  flags.DEFINE_integer('min_words', None, 'Words (word-initial subwords) before EOS at least '
                       '(default: config.min_decode_words).')
  flags.DEFINE_integer('no_repeat_ngram', None, 'n > 0: never output an n-gram of subwords '
                       'twice (default: config.no_repeat_ngram_size).')
  flags.DEFINE_string('mbr', None, 'bleu | chrf | rouge: minimum Bayes risk choice among the '
                      'beam\'s n-best with this utility; none: the beam\'s best (default: '
                      'config.mbr_utility).')
  flags.DEFINE_float('mbr_temperature', None, 'MBR weights exp(score / T); 0 = equal weights '
                     '(default: config.mbr_temperature).')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_integer('average_last', None, 'Average the parameters of the last K checkpoints '
                       '(default: config.average_last).')
  flags.DEFINE_list('ensemble', [], 'Workdirs of more runs to decode with --workdir\'s as one '
                    'ensemble (mean of the next-token probabilities; the same vocabulary).')
  flags.DEFINE_bool('ema', False, 'Decode with the moving average of the parameters (a run '
                    'trained with config.ema_decay > 0).')
  flags.DEFINE_integer('batch_size', None, 'Sentences per batch (default: config.eval_batch_size).')
  flags.DEFINE_string('input', None, 'Translate/summarise lines of this file (- for stdin).')
  flags.DEFINE_string('plot_attention', None, 'Sentence whose attention maps to draw.')
  flags.DEFINE_bool('score_annotations', False, 'Decode nothing: score the split\'s human '
                    'annotations against its other references (`annotator_scores`).')
  flags.DEFINE_string('output', 'attention.png', 'Image path for --plot_attention.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  if not FLAGS.workdir:
    sys.exit('error: --workdir is required.')
  try:
    config, tok = load_run(FLAGS.workdir)
    for flag, field in CONSTRAINT_FLAGS.items():
      value = FLAGS[flag].value
      if value is not None:
        if value < 0:
          raise EvalError(f'--{flag}={value} must be >= 0 (0: off).')
        config[field] = value
    beam_size = config.beam_size if FLAGS.beam_size is None else FLAGS.beam_size
    if beam_size < 1:
      raise EvalError(f'--beam_size={beam_size} must be >= 1 (1: greedy).')
    if FLAGS.mbr is not None:
      config.mbr_utility = '' if FLAGS.mbr == 'none' else FLAGS.mbr
    elif beam_size == 1:
      config.mbr_utility = ''  # greedy: no n-best to choose from
    average_last = config.average_last if FLAGS.average_last is None else FLAGS.average_last
    if FLAGS.mbr_temperature is not None:
      config.mbr_temperature = FLAGS.mbr_temperature
    check_mbr(config, beam_size)
    alpha = config.length_penalty if FLAGS.alpha is None else FLAGS.alpha
    batch_size = FLAGS.batch_size or config.eval_batch_size
    split = FLAGS.split or config.eval_split
    if FLAGS.input is None and FLAGS.plot_attention is None:
      known = datasets.splits_of(config)
      if known is not None and split not in known:  # before restoring anything
        raise EvalError(f'unknown split {split!r}; splits of {config.dataset}: {known}.')
    if FLAGS.score_annotations:
      for key, value in annotator_scores(datasets.load_examples(config, split)[0]).items():
        print(f'  {key:16s} {value:6.2f}')
      return
    if FLAGS.ensemble and FLAGS.plot_attention is not None:
      raise EvalError('--plot_attention draws one model\'s attention; drop --ensemble.')
    if FLAGS.ensemble:
      graphdef, params, rest, used = load_ensemble(config, tok, FLAGS.workdir, FLAGS.ensemble,
                                                   FLAGS.step, average_last, FLAGS.ema)
    else:
      graphdef, params, rest, used = load_params(config, FLAGS.workdir, FLAGS.step,
                                                 average_last, FLAGS.ema)
    if FLAGS.input is not None:
      lines = (sys.stdin.read() if FLAGS.input == '-' else
               epath.Path(FLAGS.input).read_text()).split('\n')
      if lines and lines[-1] == '':
        lines = lines[:-1]
      for line in translate_lines(config, tok, graphdef, params, rest, beam_size, alpha,
                                  batch_size, lines):
        print(line)
      return
    if FLAGS.plot_attention is not None:
      maps = attention_maps(config, tok, graphdef, params, rest, FLAGS.plot_attention,
                            beam_size, alpha)
      plot_attention(*maps, FLAGS.output)
      print(f'output: {tok.sp.decode(maps[1])}\nattention maps written to {FLAGS.output}')
      return
    report, hyp_path = evaluate_split(config, tok, graphdef, params, rest, used, split,
                                      beam_size, alpha, batch_size, FLAGS.workdir, FLAGS.ema)
  except (EvalError, datasets.DataError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
  averaged = f', average of {len(used)} checkpoints {used}' if len(used) > 1 else ''
  averaged += ', moving average of the parameters' if FLAGS.ema else ''
  averaged += f', ensemble with {",".join(FLAGS.ensemble)}' if FLAGS.ensemble else ''
  settings = ''.join(f', {flag} {config[field]}' for flag, field in CONSTRAINT_FLAGS.items()
                     if config[field])
  if config.mbr_utility:
    settings += f', MBR {config.mbr_utility} (temperature {config.mbr_temperature:g})'
  print(f'{split}: {report["num_examples"]} examples, beam {beam_size}, alpha {alpha}{settings}, '
        f'step {used[-1]}{averaged}; decoded in {report["decode_seconds"]:.1f} s')
  for key, value in report.items():
    if isinstance(value, float) and key not in ('alpha', 'decode_seconds', 'mbr_temperature'):
      signature = report.get(f'{key}_signature', '')
      print(f'  {key:16s} {value:6.2f}  {signature}')
  print(f'hypotheses: {hyp_path}')
  decoding_flags = ('beam_size', 'alpha', 'mbr', 'mbr_temperature', 'average_last', 'step',
                    'ensemble', 'ema', *CONSTRAINT_FLAGS)
  if (config.expected_result and split == config.eval_split
      and all(FLAGS[f].value == FLAGS[f].default for f in decoding_flags)):
    print(f'expected for this config: {config.expected_result}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
