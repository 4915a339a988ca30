"""A recurrent encoder-decoder with attention: the models attention was first built for.

Encoder: stacked bidirectional GRU or LSTM layers (Bahdanau et al. 2015); the annotation of
source token j concatenates its forward and backward states, h_j = [→h_j; ←h_j]. Decoder:
stacked cells with global attention and input feeding (Luong et al. 2015):

    s_t  = RNN(s_{t-1}, [E y_{t-1}; h~_{t-1}])     top layer's state; h~_0 = 0
    e_tj = score(s_t, h_j)                         additive | dot | general
    a_t  = softmax_j(e_tj)                         padding gets zero weight
    c_t  = Σ_j a_tj h_j                            the context vector
    h~_t = tanh(W_c [c_t; s_t])                    the attentional vector, width emb_dim
    p(y_t | y_<t, x) = softmax(h~_t Eᵀ)            tied with the target embedding E

Scores (model/attention.py): additive v · tanh(W s + U h) (Bahdanau et al. 2015), dot s · h and
general s · W_a h (Luong et al. 2015). Each decoder layer starts from tanh(W_init ←h_1 + b), the
backward state of the first source token (Bahdanau et al.).

Same interface as `model.transformer.EncoderDecoder` (`__call__`, encode, decode, cross_kv,
init_cache, decode_step, output_projection), so training, beam search and ensembles take either.
Packed rows: every recurrence restarts at each example's first token (segment ids).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from model.attention import additive_scores, dot_scores
from model.common import (
  Dropout,
  ModelConfig,
  TokenEnds,
  logical_linear,
  logical_param,
  token_embedding,
)
from model.fast_ops import (
  DTYPES,
  MATMUL_DTYPES,
  PLATFORMS,
  matmul,
  resolve_matmul_dtype,
  techniques,
)

CELLS = {'gru': 3, 'lstm': 4}  # cell -> gates
SCORES = ('additive', 'dot', 'general')


@dataclasses.dataclass(frozen=True)
class RNNConfig(ModelConfig):
  """What `RNNEncoderDecoder` is built from (fields documented in configs/default.py)."""

  vocab_size: int
  emb_dim: int  # embeddings and the attentional vector h~
  rnn_hidden_dim: int  # decoder state and annotation width (each encoder direction: half)
  num_encoder_layers: int
  num_decoder_layers: int
  max_len: int
  rnn_cell: str = 'gru'  # one of CELLS
  rnn_attention: str = 'additive'  # one of SCORES
  dropout_rate: float = 0.1  # embeddings, between layers, on h~
  source_word_dropout: float = 0.0
  share_embeddings: bool = True
  tie_output_embedding: bool = True
  copy_attention: bool = False  # the Transformer's only; refused here
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  matmul_dtype: str = 'auto'
  platform: str = ''  # the program's: '' JAX's default backend, or cpu | cuda | rocm | tpu
  remat: str = 'none'  # the Transformer's only; refused here

  def __post_init__(self):
    self.check_fields(
      positive=(
        'vocab_size',
        'emb_dim',
        'rnn_hidden_dim',
        'num_encoder_layers',
        'num_decoder_layers',
        'max_len',
      ),
      choices=(
        ('rnn_cell', tuple(CELLS)),
        ('rnn_attention', SCORES),
        ('dtype', tuple(DTYPES)),
        ('param_dtype', tuple(DTYPES)),
        ('matmul_dtype', MATMUL_DTYPES),
        ('platform', PLATFORMS),
      ),
      rates=('dropout_rate', 'source_word_dropout'),
      flags=('share_embeddings', 'tie_output_embedding', 'copy_attention'),
    )
    if self.rnn_hidden_dim % 2:
      self.fail(
        'rnn_hidden_dim', 'must be even (the encoder splits it between its two directions).'
      )
    if self.copy_attention:
      self.fail('copy_attention', "is built for architecture='transformer' only; set it False.")
    if self.remat != 'none':
      self.fail('remat', "is built for architecture='transformer' only; set it 'none'.")


# ----------------------------------------------------------------------------- helpers


def example_starts(segments, reverse: bool = False):
  """[batch, len] True where an example begins when the row is read forward (its first token)
  or backward (its last): where a recurrence restarts. segments: ids, 0 for padding."""
  if reverse:
    before = jnp.pad(segments[:, 1:], ((0, 0), (0, 1)), constant_values=-1)
  else:
    before = jnp.pad(segments[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  return segments != before


# ----------------------------------------------------------------------------- cells


class RecurrentCell(nnx.Module):
  """A GRU (Cho et al. 2014) or LSTM (Hochreiter and Schmidhuber 1997) cell.

  GRU, with the reset gate applied after the recurrent matmul (as cuDNN and Flax do):
      r = σ(x W_r + h U_r + b_r),  z = σ(x W_z + h U_z + b_z)
      n = tanh(x W_n + b_n + r ⊙ (h U_n + b_hn)),  h' = (1 - z) ⊙ n + z ⊙ h
  LSTM (forget-gate bias initialised to 1):
      [i, f, g, o] = x W + h U + b,  c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g),  h' = σ(o) ⊙ tanh(c')

  The input's share of every gate, x W + b, is one matmul over all steps (`project_inputs`);
  `step` adds h U. The carry is (h,) for a GRU and (h, c) for an LSTM.
  """

  def __init__(self, cell: str, inputs: int, hidden: int, *, param_dtype, matmul_dtype, rngs):
    self.cell, self.hidden, self.matmul_dtype = cell, hidden, matmul_dtype
    gates = CELLS[cell]
    self.input_kernel = logical_param(
      nnx.initializers.lecun_normal()(rngs.params(), (inputs, gates * hidden), param_dtype),
      'embed',
      None,
    )
    orthogonal = nnx.initializers.orthogonal()
    self.hidden_kernel = logical_param(  # one orthogonal [hidden, hidden] block per gate
      jnp.concatenate(
        [orthogonal(rngs.params(), (hidden, hidden), param_dtype) for _ in range(gates)], axis=1
      ),
      None,
      None,
    )
    bias = jnp.zeros((gates * hidden,), param_dtype)
    if cell == 'lstm':
      bias = bias.at[hidden : 2 * hidden].set(1.0)
    self.bias = logical_param(bias, None)
    self.hidden_bias = (
      logical_param(jnp.zeros((hidden,), param_dtype), None) if cell == 'gru' else None
    )

  def project_inputs(self, x):
    """x [..., inputs] -> x W + b [..., gates * hidden]."""
    w = self.input_kernel[...]
    return matmul('...i,ig->...g', x, w.astype(x.dtype), self.matmul_dtype) + self.bias[...]

  def zero_carry(self, batch: int, dtype):
    return tuple(
      jnp.zeros((batch, self.hidden), dtype) for _ in range(2 if self.cell == 'lstm' else 1)
    )

  def start_carry(self, h):
    """The carry of a sequence whose first state is h (an LSTM's memory cell starts at 0)."""
    return (h,) if self.cell == 'gru' else (h, jnp.zeros_like(h))

  def step(self, carry, projected):
    """One step: carry, projected inputs x W + b [batch, gates * hidden] -> new carry."""
    h = carry[0]
    recurrent = matmul('bh,hg->bg', h, self.hidden_kernel[...].astype(h.dtype), self.matmul_dtype)
    if self.cell == 'gru':
      x_r, x_z, x_n = jnp.split(projected, 3, axis=-1)
      h_r, h_z, h_n = jnp.split(recurrent, 3, axis=-1)
      r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
      n = jnp.tanh(x_n + r * (h_n + self.hidden_bias[...]))
      return ((1.0 - z) * n + z * h,)
    i, f, g, o = jnp.split(projected + recurrent, 4, axis=-1)
    c = jax.nn.sigmoid(f) * carry[1] + jax.nn.sigmoid(i) * jnp.tanh(g)
    return (jax.nn.sigmoid(o) * jnp.tanh(c), c)


def run_cell(cell: RecurrentCell, projected, starts, reverse: bool = False):
  """The cell's states [batch, len, hidden] over projected inputs [batch, len, gates * hidden],
  read forward or backward, the carry set to zero where `starts` [batch, len] is True."""

  def body(carry, xs):
    projected_t, start_t = xs
    carry = tuple(jnp.where(start_t[:, None], 0.0, c).astype(c.dtype) for c in carry)
    carry = cell.step(carry, projected_t)
    return carry, carry[0]

  carry = cell.zero_carry(projected.shape[0], projected.dtype)
  _, states = jax.lax.scan(
    body, carry, (jnp.swapaxes(projected, 0, 1), jnp.swapaxes(starts, 0, 1)), reverse=reverse
  )
  return jnp.swapaxes(states, 0, 1)


# ----------------------------------------------------------------------------- model


class RNNEncoderDecoder(TokenEnds):
  """Bidirectional recurrent encoder, attentional recurrent decoder (see the module docstring).
  Call as model(inputs, decoder_inputs) for teacher-forced logits."""

  def __init__(self, config: RNNConfig, *, rngs: nnx.Rngs):
    self.config = config
    emb, hidden = config.emb_dim, config.rnn_hidden_dim
    param_dtype, self.dtype = DTYPES[config.param_dtype], DTYPES[config.dtype]
    self.matmul_dtype = resolve_matmul_dtype(config.matmul_dtype, config.platform)

    def embedding():
      return token_embedding(config.vocab_size, emb, self.dtype, param_dtype, rngs)

    def cell(inputs, width):
      return RecurrentCell(
        config.rnn_cell,
        inputs,
        width,
        param_dtype=param_dtype,
        matmul_dtype=self.matmul_dtype,
        rngs=rngs,
      )

    def linear(inputs, outputs, use_bias=True):
      return logical_linear(
        inputs, outputs, ('embed', None), self.dtype, param_dtype, rngs, use_bias=use_bias
      )

    self.target_embed = embedding()
    self.source_embed = None if config.share_embeddings else embedding()
    self.dropout = Dropout(config.dropout_rate, platform=config.platform)
    # word dropout: a token's whole embedding (the mask shared along the features)
    self.word_dropout = Dropout(
      config.source_word_dropout, broadcast_dims=(-1,), platform=config.platform
    )
    self.encoder_cells = nnx.List(
      [
        nnx.List([cell(emb if i == 0 else hidden, hidden // 2) for _ in ('forward', 'backward')])
        for i in range(config.num_encoder_layers)
      ]
    )
    # The first decoder layer reads [E y_{t-1}; h~_{t-1}] (input feeding).
    self.decoder_cells = nnx.List(
      [cell(2 * emb if i == 0 else hidden, hidden) for i in range(config.num_decoder_layers)]
    )
    self.init_state = linear(hidden // 2, config.num_decoder_layers * hidden)
    if config.rnn_attention == 'additive':
      self.query_kernel = linear(hidden, hidden, use_bias=False)  # W
      self.key_kernel = linear(hidden, hidden)  # U (and the score's bias)
      self.score_vector = logical_param(
        nnx.initializers.normal(hidden**-0.5)(rngs.params(), (hidden,), param_dtype), None
      )
    elif config.rnn_attention == 'general':
      self.key_kernel = linear(hidden, hidden, use_bias=False)  # W_a
    self.combine = linear(2 * hidden, emb, use_bias=False)  # W_c
    self.logits_dense = (
      None
      if config.tie_output_embedding
      else logical_linear(emb, config.vocab_size, ('embed', 'vocab'), self.dtype, param_dtype, rngs)
    )

  # -- embeddings and projections

  def _embed(self, table, tokens, rngs, source: bool = False):
    """Token embeddings scaled by sqrt(emb_dim), word dropout (source), then dropout."""
    x = table(tokens) * jnp.asarray(math.sqrt(self.config.emb_dim), self.dtype)
    if source:
      x = self.word_dropout(x, rngs=rngs)
    return self.dropout(x, rngs=rngs)

  # -- encoder

  def encode(
    self,
    inputs,
    inputs_positions=None,
    inputs_segmentation=None,
    *,
    rngs=None,
    return_weights=False,
  ):
    """inputs [batch, src_len] -> annotations [batch, src_len, rnn_hidden_dim] (and, with
    return_weights, the encoder's attention maps: none). Positions are not used."""
    del inputs_positions
    self._check_tokens('inputs', inputs)
    segments = (
      (inputs != 0).astype(jnp.int32) if inputs_segmentation is None else inputs_segmentation
    )
    table = self.source_embed or self.target_embed
    x = self._embed(table, inputs, rngs, source=True)
    for forward, backward in self.encoder_cells:
      states = [
        run_cell(forward, forward.project_inputs(x), example_starts(segments)),
        run_cell(backward, backward.project_inputs(x), example_starts(segments, True), True),
      ]
      x = self.dropout(jnp.concatenate(states, axis=-1), rngs=rngs)
    return (x, []) if return_weights else x

  def _keys(self, annotations):
    """What the scores compare queries with: U h (additive), W_a h (general) or h (dot)."""
    return annotations if self.config.rnn_attention == 'dot' else self.key_kernel(annotations)

  def _initial_states(self, first_backward):
    """Each decoder layer's first state from ←h_1 [..., hidden / 2] -> [..., layers, hidden]."""
    states = jnp.tanh(self.init_state(first_backward))
    return states.reshape(*states.shape[:-1], self.config.num_decoder_layers, -1)

  def cross_kv(self, encoded, heads_major: bool = False):
    """What decoding reads of each source, computed once: annotations (the values), keys and
    the decoder's initial states. heads_major: accepted for the Transformer's interface."""
    del heads_major
    half = self.config.rnn_hidden_dim // 2
    return {
      'values': encoded,
      'keys': self._keys(encoded),
      'initial': self._initial_states(encoded[:, 0, half:]),
    }

  # -- decoder

  def _restart(self, carry, initial, start):
    """The decoder carry (per layer cell carries, h~) where `start` (bool, broadcastable to
    [rows, 1]) is True: each layer from `initial` [rows, layers, hidden], h~ from zero."""
    states, feed = carry
    states = tuple(
      tuple(jnp.where(start, s, c) for s, c in zip(cell.start_carry(initial[:, i]), state))
      for i, (cell, state) in enumerate(zip(self.decoder_cells, states))
    )
    return states, jnp.where(start, 0.0, feed).astype(feed.dtype)

  def _decoder_step(self, carry, embedded, memory, mask, rngs):
    """One target position for rows decoding `sources` sources (rows // sources each).

    carry: (per layer cell carries [rows, hidden], h~_{t-1} [rows, emb_dim]); embedded: E
    y_{t-1} [rows, emb_dim]; memory: keys and values [sources, src_len, .]; mask: [sources,
    rows per source | 1, src_len]; rngs: dropout's nnx.Rngs (None: none). Returns (carry,
    (h~_t [rows, emb_dim], a_t [rows, src_len])).
    """
    states, feed = carry
    x, new_states = jnp.concatenate([embedded, feed], axis=-1), []
    for i, cell in enumerate(self.decoder_cells):
      state = cell.step(states[i], cell.project_inputs(x))
      new_states.append(state)
      x = state[0] if i == len(self.decoder_cells) - 1 else self.dropout(state[0], rngs=rngs)
    keys, values = memory['keys'], memory['values']
    sources, rows = keys.shape[0], x.shape[0]
    query = x.reshape(sources, rows // sources, -1)  # s_t [sources, rows per source, hidden]
    if self.config.rnn_attention == 'additive':
      scores = additive_scores(self.query_kernel(query), keys, self.score_vector[...])
    else:
      scores = dot_scores(query, keys)
    weights = techniques(self.config.platform).masked_softmax(
      scores, mask
    )  # [sources, rows per source, src_len]
    context = jnp.einsum('nrs,nsd->nrd', weights.astype(values.dtype), values).reshape(rows, -1)
    attentional = jnp.tanh(self.combine(jnp.concatenate([context, x], axis=-1)))
    return (tuple(new_states), attentional), (attentional, weights.reshape(rows, -1))

  def decode(
    self,
    encoded,
    inputs,
    decoder_inputs,
    *,
    targets_positions=None,
    inputs_segmentation=None,
    targets_segmentation=None,
    rngs=None,
    return_weights=False,
    return_features=False,
  ):
    """Teacher-forced decoding: logits [batch, tgt_len, vocab] (float32) for decoder_inputs,
    or with return_features the attentional vectors h~ [batch, tgt_len, emb_dim]. With
    return_weights also the attention weights, as one layer of one head [batch, 1, tgt, src]."""
    del targets_positions
    self._check_tokens('decoder_inputs', decoder_inputs)
    if encoded.shape[0] != decoder_inputs.shape[0] or encoded.shape[:2] != inputs.shape:
      raise ValueError(
        f'batch mismatch: encoded {encoded.shape}, inputs {inputs.shape}, '
        f'decoder_inputs {decoder_inputs.shape}.'
      )
    source = (inputs != 0).astype(jnp.int32) if inputs_segmentation is None else inputs_segmentation
    target = (
      (decoder_inputs != 0).astype(jnp.int32)
      if targets_segmentation is None
      else targets_segmentation
    )
    mask = (target[:, :, None] == source[:, None, :]) & (target[:, :, None] != 0)  # [b, t, s]
    # Each target token's example begins at the first source token of its segment; the
    # decoder restarts there from that token's backward state.
    half = self.config.rnn_hidden_dim // 2
    first = jnp.argmax(mask, axis=-1)  # [batch, tgt_len]
    initial = self._initial_states(jnp.take_along_axis(encoded[..., half:], first[..., None], 1))
    embedded = self._embed(self.target_embed, decoder_inputs, rngs)
    memory = {'keys': self._keys(encoded), 'values': encoded}
    batch = decoder_inputs.shape[0]
    carry = (
      tuple(cell.zero_carry(batch, embedded.dtype) for cell in self.decoder_cells),
      jnp.zeros((batch, self.config.emb_dim), embedded.dtype),
    )

    # one dropout key per step, drawn here: a scan's body cannot advance `rngs` outside it
    length = decoder_inputs.shape[1]
    step_keys = None if rngs is None else jax.random.split(rngs.dropout(), length)

    def body(carry, xs):
      embedded_t, start_t, initial_t, mask_t, key_t = xs
      carry = self._restart(carry, initial_t, start_t[:, None])
      step_rngs = None if key_t is None else nnx.Rngs(dropout=key_t)
      return self._decoder_step(carry, embedded_t, memory, mask_t[:, None, :], step_rngs)

    time_major = [jnp.swapaxes(a, 0, 1) for a in (embedded, example_starts(target), initial, mask)]
    _, (features, weights) = jax.lax.scan(body, carry, (*time_major, step_keys))
    features = self.dropout(jnp.swapaxes(features, 0, 1), rngs=rngs)
    out = features if return_features else self.vocab_logits(features)
    return (out, [jnp.swapaxes(weights, 0, 1)[:, None]]) if return_weights else out

  def __call__(
    self,
    inputs,
    decoder_inputs,
    *,
    inputs_positions=None,
    targets_positions=None,
    inputs_segmentation=None,
    targets_segmentation=None,
    rngs=None,
    return_features=False,
  ):
    """Teacher-forced logits [batch, tgt_len, vocab]; dropout only when `rngs` (an nnx.Rngs
    with a `dropout` stream) is given."""
    encoded = self.encode(inputs, inputs_positions, inputs_segmentation, rngs=rngs)
    return self.decode(
      encoded,
      inputs,
      decoder_inputs,
      inputs_segmentation=inputs_segmentation,
      targets_segmentation=targets_segmentation,
      rngs=rngs,
      return_features=return_features,
    )

  # -- incremental decoding

  def init_cache(self, batch_size: int, max_len: int):
    """The recurrent state before the first step: the step index, each layer's carry and the
    fed-back h~ (the states are set from the source at step 0, see `decode_step`)."""
    if max_len > self.config.max_len:
      raise ValueError(f'decode length {max_len} exceeds config.max_len={self.config.max_len}.')
    return {
      'index': jnp.array(0, jnp.int32),
      'states': tuple(cell.zero_carry(batch_size, self.dtype) for cell in self.decoder_cells),
      'feed': jnp.zeros((batch_size, self.config.emb_dim), self.dtype),
    }

  def decode_step(self, tokens, cache, cross_kv, inputs):
    """One decoding step: tokens [rows] -> (logits [rows, vocab] float32, new cache).

    cross_kv: from `cross_kv(encoded)`, per source; rows // sources consecutive rows (a
    source's beams) decode each source. inputs: [rows, src_len] source ids per row.
    """
    sources = cross_kv['values'].shape[0]
    if tokens.shape[0] % sources:
      raise ValueError(
        f'{tokens.shape[0]} rows do not split into groups of beams of {sources} sources (cross_kv).'
      )
    group = tokens.shape[0] // sources
    initial = jnp.repeat(cross_kv['initial'], group, axis=0)  # [rows, layers, hidden]
    carry = self._restart((cache['states'], cache['feed']), initial, cache['index'] == 0)
    embedded = self._embed(self.target_embed, tokens, None)
    mask = (inputs[::group] != 0)[:, None, :]  # [sources, 1, src_len]
    (states, feed), (features, _) = self._decoder_step(carry, embedded, cross_kv, mask, None)
    logits = self.vocab_logits(features[:, None])[:, 0]
    return logits, {'index': cache['index'] + 1, 'states': states, 'feed': feed}
