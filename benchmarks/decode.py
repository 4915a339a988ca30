r"""Decoding throughput: sentences/s and tokens/s for greedy and beam search, cache on and off.

  .venv/bin/python benchmarks/decode.py [--batch=64 --source_length=32 --tokens=40]
  .venv/bin/python benchmarks/decode.py --workdir=runs/default         # a trained model, real
                                                                       # Multi30k test sources
  .venv/bin/python benchmarks/decode.py --members=2 --no_cache=false  # an ensemble of two

Default shapes (those of the reference figures in docs/speed.md): Transformer-tiny with random
weights, vocab 10000, batch 64, source length 32, exactly `--tokens` generated tokens per
sentence (EOS suppressed), beam 4 and greedy.
Figures are medians of --repeats timed runs after one compile-and-warm-up run.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from absl import app, flags  # noqa: E402

flags.DEFINE_integer('batch', 64, 'Sentences per batch.')
flags.DEFINE_integer('source_length', 32, 'Source tokens per sentence.')
flags.DEFINE_integer('tokens', 40, 'Generated tokens per sentence (EOS suppressed).')
flags.DEFINE_integer('repeats', 3, 'Timed runs; the median is reported.')
flags.DEFINE_string('beams', '1,4', 'Beam sizes to time (1 = greedy).')
flags.DEFINE_bool('no_cache', True, 'Also time decoding that recomputes the prefix each step.')
flags.DEFINE_string('workdir', None, 'Use this trained run and real Multi30k test sources.')
flags.DEFINE_string('matmul_dtype', '', 'Override config.matmul_dtype (bfloat16: mixed precision).')
flags.DEFINE_integer(
  'members',
  1,
  'Random weights: decode with an ensemble of this many models '
  '(decoding.Ensemble, as eval.py --ensemble).',
)
flags.DEFINE_integer(
  'beam_groups',
  0,
  'Concurrent beam search sub-batches (config.beam_groups; 0: auto, 2 on one CPU device).',
)
FLAGS = flags.FLAGS


import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from configs import default  # noqa: E402
from evaluation.decode import merge  # noqa: E402
from evaluation.runs import load_params, load_run  # noqa: E402
from model import decoding  # noqa: E402
from model.architectures import create_model  # noqa: E402
from model.fast_ops import resolve_matmul_dtype  # noqa: E402
from model.transformer import EncoderDecoder, TransformerConfig  # noqa: E402


def main(argv):
  del argv
  if FLAGS.workdir:
    if FLAGS.members != 1:
      raise app.UsageError(
        '--members is for random weights; ensembles of runs: eval.py --ensemble.'
      )
    from input_pipeline import batching, datasets  # pylint: disable=g-import-not-at-top

    config, tok = load_run(FLAGS.workdir)
    graphdef, params, rest, _ = load_params(config, FLAGS.workdir)
    examples, _ = datasets.load_examples(config, 'test_2016_flickr')
    sources = tok.encode([e['source'] for e in examples[: FLAGS.batch]])
    inputs = next(batching.eval_batches(sources, FLAGS.batch, FLAGS.source_length))['inputs']
    label = f'trained run {FLAGS.workdir}, Multi30k test_2016_flickr sources'
  else:
    config = default.get_config('tiny')
    config.vocab_size = 10000
    config.activation = 'relu'  # the reference figures' tiny shape
    config.position_embedding = 'sinusoidal'  # and positions (the default config's: rope)
    config.qk_norm = 0.0  # and attention scores (the default config's: QKNorm)
    graphdef, params, rest = (
      list(parts) for parts in zip(*[create_model(config, seed) for seed in range(FLAGS.members)])
    )
    if FLAGS.members == 1:
      graphdef, params, rest = graphdef[0], params[0], rest[0]
    rng = np.random.default_rng(0)
    inputs = rng.integers(4, config.vocab_size, (FLAGS.batch, FLAGS.source_length), np.int32)
    inputs[:, -1] = 1
    label = 'tiny, random weights' + (f', ensemble of {FLAGS.members}' if FLAGS.members > 1 else '')
  if FLAGS.matmul_dtype:  # the same parameters in a model whose matmuls take this dtype
    config.matmul_dtype = FLAGS.matmul_dtype
    model_config = TransformerConfig.from_config(config)
    graphdef_one = nnx.split(
      nnx.eval_shape(lambda: EncoderDecoder(model_config, rngs=nnx.Rngs(0))), nnx.Param, ...
    )[0]
    graphdef = [graphdef_one] * FLAGS.members if isinstance(graphdef, list) else graphdef_one

  beam_groups = decoding.auto_beam_groups(FLAGS.beam_groups)

  def decoder(beam, use_cache):
    @jax.jit
    def run(params, inputs):
      model = merge(graphdef, params, rest)
      kwargs = dict(
        max_len=FLAGS.tokens, len_a=0.0, len_b=FLAGS.tokens, use_cache=use_cache, allow_eos=False
      )
      if beam == 1:
        return decoding.greedy_decode(model, inputs, **kwargs)
      return decoding.beam_search(
        model, inputs, beam_size=beam, alpha=0.6, groups=beam_groups, **kwargs
      )[0]

    return run

  print(
    f'== decoding, {label}: batch {FLAGS.batch}, source length {inputs.shape[1]}, '
    f'{FLAGS.tokens} generated tokens, matmul_dtype {config.matmul_dtype} '
    f'({jnp.dtype(resolve_matmul_dtype(config.matmul_dtype)).name}), beam search in '
    f'{beam_groups} group(s); '
    f'{jax.devices()[0].platform}, {os.cpu_count()} cores'
  )
  modes = [True, False] if FLAGS.no_cache else [True]
  for beam in map(int, FLAGS.beams.split(',')):
    for use_cache in modes:
      run = decoder(beam, use_cache)
      start = time.perf_counter()
      out = jax.block_until_ready(run(params, inputs))
      compile_s = time.perf_counter() - start
      assert (np.asarray(out) != 0).sum(1).min() == FLAGS.tokens  # exactly N tokens each
      times = []
      for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(params, inputs))
        times.append(time.perf_counter() - start)
      seconds = float(np.median(times))
      name = 'greedy' if beam == 1 else f'beam {beam}'
      print(
        f'{name:8s} cache={"on " if use_cache else "off"}  '
        f'{FLAGS.batch / seconds:8.1f} sentences/s  '
        f'{FLAGS.batch * FLAGS.tokens / seconds:9.0f} tokens/s  '
        f'(first call incl. compile {compile_s:.1f} s)'
      )


if __name__ == '__main__':
  app.run(main)
