"""A recurrent encoder-decoder with attention on Multi30k En->De, at Transformer-tiny's size.

  .venv/bin/python train.py --config=configs/rnn_attention.py --workdir=runs/rnn
  .venv/bin/python eval.py --workdir=runs/rnn --split=test_2016_flickr

Bidirectional GRU encoder (2 layers, 128 units each way), GRU decoder (2 layers, 256 units) with
Bahdanau's additive attention in Luong et al.'s decoder (input feeding, h~ of width 128 tied to
the 128-wide embeddings): 2,569,216 parameters against Transformer-tiny's 2,613,772. The data,
vocabulary, loss, optimizer, clock and decoding are the default config's; the learning rate and
its warmup are the only training fields changed (not tuned). Variants: `:lstm`, `:dot`,
`:general`, or any field, e.g. `--config.rnn_cell=lstm --config.rnn_attention=dot`.
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
