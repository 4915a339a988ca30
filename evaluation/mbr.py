"""Minimum Bayes risk selection over an n-best list, with sentence BLEU, chrF or ROUGE as the
utility; the pairwise utilities count each text's n-grams once."""

import collections

import numpy as np
import sacrebleu
from sacrebleu.metrics import helpers as sacrebleu_helpers

from evaluation import EvalError


def pairwise_sentence_bleu(texts):
  """[n, n] sentence BLEU of texts[i] against texts[j] as the reference, x 100: SacreBLEU's
  sentence_score (13a tokens, exp smoothing, effective order), each text tokenised and its
  n-grams counted once instead of once per pair."""
  metric = sacrebleu.metrics.BLEU(effective_order=True)
  counted = [
    sacrebleu_helpers.extract_all_word_ngrams(metric.tokenizer(t.rstrip()), 1, 4) for t in texts
  ]
  scores = np.zeros((len(texts), len(texts)))
  for i, (hyp, hyp_len) in enumerate(counted):
    for j, (ref, ref_len) in enumerate(counted):
      correct, total = [0] * 4, [0] * 4
      for ngram, count in hyp.items():
        total[len(ngram) - 1] += count
        correct[len(ngram) - 1] += min(count, ref.get(ngram, 0))
      scores[i, j] = metric.compute_bleu(
        correct,
        total,
        hyp_len,
        ref_len,
        metric.smooth_method,
        metric.smooth_value,
        effective_order=True,
      ).score
  return scores


def lcs_length(a, b) -> int:
  """Length of the longest common subsequence of two token lists (dynamic programming)."""
  row = [0] * (len(b) + 1)
  for x in a:
    diagonal = 0
    for j, y in enumerate(b):
      diagonal, row[j + 1] = row[j + 1], (diagonal + 1 if x == y else max(row[j + 1], row[j]))
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
  counts = [
    [collections.Counter(zip(*(toks[k:] for k in range(n)))) for n in (1, 2)] for toks in tokens
  ]
  sizes = [(len(toks), max(len(toks) - 1, 0)) for toks in tokens]  # unigrams, bigrams

  def f1(overlap, hyp_total, ref_total):
    return 0.0 if overlap == 0 else 2 * overlap / (hyp_total + ref_total)

  scores = np.zeros((len(texts), len(texts)))
  for i in range(len(texts)):
    for j in range(i, len(texts)):
      total = sum(
        f1(sum((counts[i][n] & counts[j][n]).values()), sizes[i][n], sizes[j][n]) for n in (0, 1)
      )
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
    table = np.array([[chrf.sentence_score(h, [r]).score for r in hypotheses] for h in hypotheses])
  else:
    raise EvalError(f'MBR utility {utility!r} is not one of bleu, chrf, rouge.')
  scores = np.asarray(scores, np.float64)
  weights = (
    np.ones_like(scores) if temperature == 0 else np.exp((scores - scores.max()) / temperature)
  )
  return hypotheses[int(np.argmax(table @ (weights / weights.sum())))]
