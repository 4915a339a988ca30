"""AESLC email subject-line generation (email body -> subject line), trained from scratch.

Command:
  .venv/bin/python train.py --config=configs/aeslc.py --workdir=runs/aeslc
  .venv/bin/python eval.py --workdir=runs/aeslc --split=test

Choices for this data: bodies average ~118 words, so sources are cut to 192 tokens (not dropped);
subjects are ~4 words, so targets are short and rows are bucketed by length rather than packed
(packing long sources with short targets would waste the target side). A small vocabulary and
a small model suit 14k training emails. eval.py scores ROUGE-1/2/Lsum F1 (Porter stemming)
against the subject line and the three human annotations of each test email.
Reference: Zhang & Tetreault 2019, best ROUGE-1/2/L 23.67 / 10.29 / 23.44 (test).
Time on a 2-core CPU and measured ROUGE: not yet run (README "Results" gets them when it is).
"""

from configs import default


def get_config():
  config = default.get_config('tiny')
  config.task = 'summarization'
  config.dataset = 'aeslc'
  config.eval_split = 'validation'
  config.vocab_size = 8000
  config.max_len = 256
  config.max_train_len = 192
  config.max_eval_len = 192
  config.max_target_len = 32          # subjects: median 6, 99th percentile 24 tokens
  config.truncate_inputs = True
  config.batching = 'bucketed'
  config.max_tokens = 6144
  config.dropout_rate = 0.2
  config.learning_rate = 2e-3
  config.warmup_steps = 800
  config.num_train_steps = 4000
  config.checkpoint_every_steps = 250
  config.eval_every_steps = 500
  config.beam_size = 4
  config.length_penalty = 0.6
  config.max_decode_len_a = 0.0        # subject lines: at most 24 tokens whatever the body
  config.max_decode_len_b = 24
  return config
