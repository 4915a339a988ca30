"""The architectures an experiment config selects by `config.architecture`, built one way."""

from flax import nnx

from model.rnn import RNNConfig, RNNEncoderDecoder
from model.transformer import EncoderDecoder, TransformerConfig

# name -> (typed model config, module)
ARCHITECTURES = {
  'transformer': (TransformerConfig, EncoderDecoder),  # Vaswani et al. 2017
  'rnn': (RNNConfig, RNNEncoderDecoder),  # Bahdanau et al. 2015, Luong et al. 2015
}


def model_config(config, platform: str = ''):
  """The typed model config of an experiment config (a ConfigDict or mapping), for programs
  built for `platform` ('': JAX's default backend); ValueError naming the field when a value
  cannot build the model."""
  architecture = config['architecture']
  if architecture not in ARCHITECTURES:
    raise ValueError(
      f'config.architecture={architecture!r} is unknown; use one of {tuple(ARCHITECTURES)}.'
    )
  return ARCHITECTURES[architecture][0].from_config(config, platform)


def build_model(config, rngs: nnx.Rngs, platform: str = ''):
  """The model `config` describes, its parameters drawn from rngs, for `platform`'s programs."""
  return ARCHITECTURES[config['architecture']][1](model_config(config, platform), rngs=rngs)


def create_model(config, seed: int, platform: str = ''):
  """(graphdef, params, rest): the model `config` describes, its parameters drawn from `seed`,
  split into structure, parameters and constants (`nnx.split`), for `platform`'s programs
  ('': JAX's default backend; 'cuda' or 'tpu' to build an accelerator's program here)."""
  return nnx.split(build_model(config, nnx.Rngs(seed), platform), nnx.Param, ...)
