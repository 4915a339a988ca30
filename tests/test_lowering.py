"""Accelerator programs built on this CPU: the training step (one device and a 2 x 2 x 2 mesh)
and beam search with the cached decoding step of the default, :base and RNN configs lower for
TPU and CUDA with jax.export (tests/lowering.py, in a subprocess with 8 devices), with the
accelerator's choices: bfloat16 matmuls and none of the CPU techniques of model/fast_ops.py."""

import json
import subprocess
import sys

import pytest

from model import fast_ops

from helpers import ROOT

CONFIGS = ('default', 'base', 'rnn')
PLATFORMS = ('tpu', 'cuda')
PROGRAMS = ('train_step_1', 'train_step_8', 'beam_search')


@pytest.fixture(scope='module')
def lowered():
  """{config/platform/program: facts}, and the CPU's training step of the default config as the
  control: the same check finds the hashed dropout there."""
  pairs = [f'{config}/{platform}' for config in CONFIGS for platform in PLATFORMS]
  command = [sys.executable, 'tests/lowering.py', *pairs, 'default/cpu']
  done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize('config', CONFIGS)
@pytest.mark.parametrize('platform', PLATFORMS)
def test_the_programs_lower_for_the_accelerator_with_its_choices(lowered, config, platform):
  for program in PROGRAMS:
    facts = lowered[f'{config}/{platform}/{program}']
    assert 'error' not in facts, (program, facts)
    assert facts['platforms'] == [platform]
    assert facts['devices'] == (8 if program == 'train_step_8' else 1)
    assert facts['bf16_dot'], program  # matmul_dtype 'auto' is bfloat16 on accelerators
    assert not facts['hashed_dropout'], program  # jax.random's dropout, not the CPU hash


@pytest.mark.slow
def test_the_check_finds_the_cpu_technique_in_the_cpus_program(lowered):
  assert lowered['default/cpu/train_step_1']['hashed_dropout']


def test_accelerators_get_the_formulas_and_the_cpu_its_techniques():
  cpu, reference = fast_ops.techniques('cpu'), fast_ops.techniques('tpu')
  assert cpu == (
    fast_ops.masked_softmax,
    fast_ops.layer_norm,
    fast_ops.dropout_keep_mask,
    fast_ops.top_k,
  )
  assert reference == fast_ops.techniques('cuda') == fast_ops.techniques('gpu')
  assert reference == (
    fast_ops.masked_softmax_reference,
    fast_ops.layer_norm_reference,
    fast_ops.dropout_keep_mask_reference,
    fast_ops.top_k_reference,
  )
  assert fast_ops.resolve_matmul_dtype('auto', 'tpu') == fast_ops.resolve_matmul_dtype(
    'auto', 'cuda'
  )
  assert fast_ops.platform_of('gpu') == 'cuda'
