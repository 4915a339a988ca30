"""A recurrent encoder-decoder with attention on Multi30k En->De, at Transformer-tiny's size.

  .venv/bin/python train.py --config=configs/rnn_attention.py --workdir=runs/rnn
  .venv/bin/python eval.py --workdir=runs/rnn --split=test_2016_flickr

2 bidirectional GRU layers (128 units each way), 2 GRU decoder layers (256) with Bahdanau's
additive attention in Luong et al.'s decoder (input feeding; h~ of 128 tied to the embeddings):
2,569,216 parameters against Transformer-tiny's 2,613,772. Data, vocabulary, loss, optimizer,
60-minute clock and decoding are the default config's; only the learning rate and warmup differ
(set once, not tuned). Seed 0 on one core of a 2-core AMD EPYC Zen 4 (beside a Transformer on
the other): 5450 steps in 60 min, val 37.68 (beam 5), test_2016_flickr 36.36 tokenized
lowercased BLEU at the config's decoding, against the Transformer's 8000 steps and 39.92
(docs/attention_vs_recurrence.md; pretrained/multi30k_en_de_rnn is that run's export).
Variants: `:lstm`, `:dot`, `:general`, or fields, e.g. `--config.rnn_attention=dot`.
"""

from configs import default

VARIANTS = {'gru': {}, 'lstm': {'rnn_cell': 'lstm'}}
VARIANTS.update({score: {'rnn_attention': score} for score in ('additive', 'dot', 'general')})


def get_config(variant: str = 'gru'):
  """The default config with architecture='rnn'; `variant` is a cell or an attention score."""
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r}; use one of {sorted(VARIANTS)}.')
  config = default.get_config()
  config.architecture = 'rnn'
  config.num_encoder_layers = 2
  config.num_decoder_layers = 2
  config.rnn_hidden_dim = 256
  config.warmup_steps = 500
  config.learning_rate = 2e-3
  config.expected_result = ''
  config.update(VARIANTS[variant])
  return config
