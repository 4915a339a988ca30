"""The released model in pretrained/: it loads as a run eval.py reads and translates."""

import os

import jax
import numpy as np

from evaluation import evaluate as ev
from evaluation.runs import load_run, restore

from helpers import ROOT

EXPECTED = 'Ein Hund rennt über das Feld.'  # the config's decoding: MBR over beam 20
RELEASED = os.path.join(ROOT, 'pretrained', 'multi30k_en_de')


def test_the_released_model_translates_a_sentence():
  config, tok = load_run(RELEASED)
  assert config.architecture == 'transformer' and config.average_last == 1
  config.matmul_dtype = 'float32'  # the same output on hosts with and without bfloat16 matmuls
  run = restore(RELEASED, config, tok)
  leaves = jax.tree.leaves(run.params)
  assert sum(x.size for x in leaves) == 2_613_772
  assert all(np.dtype(x.dtype) == np.float32 for x in leaves)
  (translation,) = ev.translate_lines(run, ['A dog runs across the field.'])
  assert translation == EXPECTED
