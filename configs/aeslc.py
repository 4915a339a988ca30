"""AESLC email subject-line generation (email body -> subject line), trained from scratch.

Command:
  .venv/bin/python train.py --config=configs/aeslc.py --workdir=runs/aeslc
  .venv/bin/python eval.py --workdir=runs/aeslc --split=test --average_last=5

Choices for this data: bodies average ~118 words, so sources are cut to 192 tokens (not dropped);
subjects are ~6 tokens (99th percentile 24), so targets get their own 32-token rows
(max_target_len; longer ones, 0.15%, are dropped) and rows are bucketed by source length. A small
vocabulary and model suit 14k training emails. eval.py scores ROUGE-1/2/Lsum F1 (Porter
stemming), best over the subject line and the three human annotations of each test email, and
also their mean and the subject line alone.

Measured (2-core x86 CPU, run pinned to one core while another job used the other): 4000 steps
in 1 h 23 min (~0.95 steps/s). With both cores a 120-step run made 1.58 steps/s, i.e. ~45 min
for the schedule (estimate, not timed end to end).
Checkpoint choice on validation (beam 4): last 16.57 / 5.68 / 16.53, average of the last 5
16.71 / 5.62 / 16.65 (alpha 1.2: 16.52; alpha 2.0: 14.42). Test, average of the last 5, beam 4,
alpha 0.6: ROUGE-1/2/Lsum 15.73 / 4.82 / 15.64 (best over references), 8.03 / 1.89 / 7.93 (mean
over references), 10.03 / 3.73 / 10.00 (subject line only).
Reference: Zhang & Tetreault 2019, best ROUGE-1/2/L 23.67 / 10.29 / 23.44 (test): NOT reached.
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
  config.schedule = 'rsqrt'
  config.matmul_dtype = 'float32'     # as measured (before bfloat16 matmuls became the default)
  config.warmup_steps = 800
  config.num_train_steps = 4000
  config.checkpoint_every_steps = 250
  config.eval_every_steps = 500
  config.beam_size = 4
  config.length_penalty = 0.6
  config.max_decode_len_a = 0.0        # subject lines: at most 24 tokens whatever the body
  config.max_decode_len_b = 24
  return config
