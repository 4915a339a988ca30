"""Evaluation: restoring runs, decoding (one factory for train-time validation and eval.py),
the metrics (BLEU, chrF, tokenized BLEU, ROUGE) and minimum Bayes risk selection."""


class EvalError(ValueError):
  """A missing run, checkpoint or split; the message says what to do."""
