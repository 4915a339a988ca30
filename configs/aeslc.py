"""AESLC email subject lines (body -> subject), from scratch (Zhang and Tetreault, ACL 2019).

  .venv/bin/python train.py --config=configs/aeslc.py --workdir=runs/aeslc
  .venv/bin/python eval.py --workdir=runs/aeslc --split=test

Transformer-tiny as configs/default.py (SwiGLU, rotary positions, QKNorm) with copy attention
(pointer-generator), lowercased text, sources cut to 192 tokens, targets in their own 32-token
rows, Adam with the 1/sqrt schedule (peak 2e-3), 3000 steps of ~6,000-source-token buckets.
Decoding (chosen on validation): MBR over beam 32 with a ROUGE utility, T 1.0, at least 2
words, no subword twice, the mean of the last 5 checkpoints.

On a 2-core AMD EPYC Zen 5 (no GPU), seed 0: 26.0 min of training, the test decode 123 s; test
ROUGE-1/2/Lsum 45.67/26.72/44.29 best over the subject line and 3 annotations, 27.20/12.87/26.09
their mean, 26.12/13.18/25.31 the subject line alone. Published best: 23.67/10.29/23.44. An
ensemble of four seeds: 47.18/29.45/45.93 best over references. docs/results.md has the tables
and the choices behind this recipe.
"""

from configs import default


def get_config():
  config = default.get_config('tiny')
  config.task = 'summarization'
  config.dataset = 'aeslc'
  config.eval_split = 'validation'
  config.lowercase = True  # ROUGE ignores case; copying needs the body's case
  config.vocab_size = 8000
  config.max_len = 256
  config.max_train_len = 192
  config.max_eval_len = 192
  config.max_target_len = 32  # subjects: median 6, 99th percentile 24 tokens
  config.truncate_inputs = True
  config.batching = 'bucketed'
  config.max_tokens = 6144
  config.dropout_rate = 0.2
  config.optimizer = 'adam'  # AdamW's decay was chosen on Multi30k only
  config.weight_decay = 0.0
  config.learning_rate = 2e-3
  config.schedule = 'rsqrt'
  config.warmup_steps = 800
  config.copy_attention = True  # pointer-generator: copy names and topics from the body
  config.num_train_steps = 3000  # validation ROUGE peaked here
  config.time_budget_minutes = 120.0
  config.checkpoint_every_steps = 250
  config.eval_every_steps = 500
  config.beam_size = 32  # the decoding fields: chosen on validation
  config.length_penalty = 1.0
  config.min_decode_words = 2
  config.no_repeat_ngram_size = 1
  config.mbr_utility = 'rouge'  # minimum Bayes risk over the 32-best, ROUGE-1/2/L utility
  config.mbr_temperature = 1.0
  config.average_last = 5  # the 5 checkpoints up to step 3000
  config.expected_result = ''
  config.max_decode_len_a = 0.0  # subject lines: at most 24 tokens whatever the body
  config.max_decode_len_b = 24
  return config
