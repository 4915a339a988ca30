"""Corpus scores: SacreBLEU, chrF, tokenized lowercased BLEU and ROUGE under three reference
protocols."""

import numpy as np
import sacrebleu

from evaluation import EvalError


def moses_tok_lc(lines, lang: str):
  """Lowercase, normalise punctuation and Moses-tokenise, as Multi30k's tok/ references: with
  tokenizer.perl's XML escapes (" -> &quot;, ' -> &apos;), which those files carry."""
  from sacremoses import MosesPunctNormalizer, MosesTokenizer  # pylint: disable=g-import-not-at-top

  normalizer, tokenizer = MosesPunctNormalizer(lang), MosesTokenizer(lang)
  return [
    tokenizer.tokenize(normalizer.normalize(line.lower()), escape=True, return_str=True)
    for line in lines
  ]


def translation_scores(hypotheses, examples, target_lang=None):
  refs = [e['references'][0] for e in examples]
  bleu = sacrebleu.metrics.BLEU()
  chrf = sacrebleu.metrics.CHRF()
  scores = {
    'bleu': bleu.corpus_score(hypotheses, [refs]).score,
    'bleu_signature': str(bleu.get_signature()),
    'chrf': chrf.corpus_score(hypotheses, [refs]).score,
    'chrf_signature': str(chrf.get_signature()),
  }
  tok_refs = [e.get('tok_reference', '') for e in examples]
  if all(tok_refs) and target_lang:
    tok_bleu = sacrebleu.metrics.BLEU(tokenize='none', force=True)
    scores['tok_lc_bleu'] = tok_bleu.corpus_score(
      moses_tok_lc(hypotheses, target_lang), [tok_refs]
    ).score
  return scores


def rouge(hypotheses, reference_lists, reduce: str = 'max'):
  """ROUGE-1/2/Lsum F1 x 100 (Porter stemming); with several references per hypothesis, the
  best (reduce='max') or the mean ('mean') over them. rougeLsum splits on newlines
  (split_summaries=True would need nltk data)."""
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top

  names = ('rouge1', 'rouge2', 'rougeLsum')
  scorer = rouge_scorer.RougeScorer(list(names), use_stemmer=True)
  f1 = []  # [example, metric]
  for hypothesis, references in zip(hypotheses, reference_lists):
    if reduce == 'max':
      best = scorer.score_multi(references, hypothesis)
      f1.append([best[name].fmeasure for name in names])
      continue
    each = [scorer.score(reference, hypothesis) for reference in references]
    f1.append([np.mean([s[name].fmeasure for s in each]) for name in names])
  # The plain mean over examples: rouge-score's BootstrapAggregator reports the median of
  # unseeded resamples, which moves the second decimal from call to call.
  return dict(zip(names, 100 * np.mean(np.reshape(f1, (-1, len(names))), axis=0)))


def rouge_scores(hypotheses, examples):
  """ROUGE-1/2/Lsum F1 x 100: for each example the best over its references (the headline
  figures), the mean over them ('_mean'), and against the target alone ('_target': for AESLC
  the original subject line, without the three annotations)."""
  return rouge_protocols(
    hypotheses, [e['references'] for e in examples], [e['target'] for e in examples]
  )


def rouge_protocols(hypotheses, references, targets):
  """`rouge` best over each hypothesis' references (''), their mean ('_mean') and
  against its target alone ('_target')."""
  scores = rouge(hypotheses, references)
  for suffix, refs, reduce in (
    ('mean', references, 'mean'),
    ('target', [[target] for target in targets], 'max'),
  ):
    scores.update(
      {f'{name}_{suffix}': value for name, value in rouge(hypotheses, refs, reduce).items()}
    )
  return scores


def annotator_scores(examples):
  """The human scale for `rouge_scores`: each annotation (references[1:]) scored as the
  hypothesis against the other references, best ('') and mean ('_mean') over them, and against
  the target alone ('_target'), averaged over the annotators."""
  counts = {len(e['references']) for e in examples}
  if min(counts) < 2 or len(counts) > 1:
    raise EvalError(
      f'--score_annotations needs the same number (>= 2) of references for every '
      f'example; this split has {sorted(counts)} (AESLC validation and test have '
      f'4).'
    )
  per_annotator = []
  for k in range(1, counts.pop()):
    per_annotator.append(
      rouge_protocols(
        [e['references'][k] for e in examples],
        [e['references'][:k] + e['references'][k + 1 :] for e in examples],
        [e['target'] for e in examples],
      )
    )
  return {key: float(np.mean([s[key] for s in per_annotator])) for key in per_annotator[0]}
