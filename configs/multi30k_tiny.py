"""Transformer-tiny on Multi30k En->De in about an hour of a 2-core CPU (issue 6 reproduction).

Command:
  .venv/bin/python train.py --config=configs/multi30k_tiny.py --workdir=runs/multi30k_tiny
  .venv/bin/python eval.py --workdir=runs/multi30k_tiny --split=test_2016_flickr \
      --beam_size=5 --alpha=0.6 --average_last=10

Reference: Wu et al. (ACL 2021), Transformer-tiny (4+4 layers, 128 wide, 4 heads, MLP 256),
41.02 tokenized lowercased BLEU on test_2016_flickr (beam 5, last-10 checkpoint average).
Measured time and scores: README.md "Results" (all choices made on the validation split).
"""

from configs import default


def get_config():
  config = default.get_config('tiny')
  config.vocab_size = 8000             # joint SentencePiece unigram
  config.dropout_rate = 0.3            # small corpus: strong regularisation
  config.learning_rate = 3e-3
  config.warmup_steps = 1000
  config.num_train_steps = 2500
  config.checkpoint_every_steps = 100  # the last 10 checkpoints cover the last 1000 steps
  config.keep_checkpoints = 10
  config.eval_every_steps = 250
  config.num_eval_bleu_batches = 4
  config.beam_size = 5
  return config
