"""The architectures an experiment config selects by `config.architecture`, built one way."""

from flax import nnx

from model.rnn import RNNConfig, RNNEncoderDecoder
from model.transformer import EncoderDecoder, TransformerConfig

# name -> (typed model config, module)
ARCHITECTURES = {
  'transformer': (TransformerConfig, EncoderDecoder),  # Vaswani et al. 2017
  'rnn': (RNNConfig, RNNEncoderDecoder),  # Bahdanau et al. 2015, Luong et al. 2015
}


def model_config(config):
  """The typed model config of an experiment config (a ConfigDict or mapping); ValueError
  naming the field when a value cannot build the model."""
  architecture = config['architecture']
  if architecture not in ARCHITECTURES:
    raise ValueError(
      f'config.architecture={architecture!r} is unknown; use one of {tuple(ARCHITECTURES)}.'
    )
  return ARCHITECTURES[architecture][0].from_config(config)


def build_model(config, rngs: nnx.Rngs):
  """The model `config` describes, its parameters drawn from rngs."""
  return ARCHITECTURES[config['architecture']][1](model_config(config), rngs=rngs)


def create_model(config, seed: int):
  """(graphdef, params, rest): the model `config` describes, its parameters drawn from `seed`,
  split into structure, parameters and constants (`nnx.split`)."""
  return nnx.split(build_model(config, nnx.Rngs(seed)), nnx.Param, ...)
