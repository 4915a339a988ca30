"""sweep.py: the hyper helpers, and a real sweep with a failing trial and a resumed rerun."""

import csv
import os
import subprocess
import sys

import pytest

import sweep

from helpers import ROOT, tiny_run_config, write_config_file


def test_hyper_helpers_build_the_expected_trials():
  h = sweep.hyper
  depth = h.zip([h.sweep('config.enc', [1, 2]), h.sweep('config.dec', [3, 4])])
  assert depth == [{'config.enc': 1, 'config.dec': 3}, {'config.enc': 2, 'config.dec': 4}]
  trials = h.product([h.sweep('config.heads', [1, 8]), depth, h.fixed('config.steps', 5)])
  assert trials == [
    {'config.heads': 1, 'config.enc': 1, 'config.dec': 3, 'config.steps': 5},
    {'config.heads': 1, 'config.enc': 2, 'config.dec': 4, 'config.steps': 5},
    {'config.heads': 8, 'config.enc': 1, 'config.dec': 3, 'config.steps': 5},
    {'config.heads': 8, 'config.enc': 2, 'config.dec': 4, 'config.steps': 5},
  ]
  assert sweep.varying_keys(trials) == {'config.heads', 'config.enc', 'config.dec'}
  assert sweep.trial_name(trials[1], sweep.varying_keys(trials)) == 'heads=1,enc=2,dec=4'
  with pytest.raises(ValueError, match='one length'):
    h.zip([h.sweep('config.a', [1, 2]), h.sweep('config.b', [1])])


@pytest.mark.slow
def test_sweep_runs_trials_reports_a_failure_and_skips_finished_ones(tmp_path):
  config_file = write_config_file(
    tiny_run_config(tmp_path, num_train_steps=10, checkpoint_every_steps=10), tmp_path / 'cfg.py'
  )
  sweep_file = tmp_path / 'sw.py'
  # num_heads=3 does not divide emb_dim=32: that trial must fail alone.
  sweep_file.write_text(
    "def get_sweep(hyper):\n  return hyper.sweep('config.num_heads', [1, 2, 3])\n"
  )
  command = [
    sys.executable,
    os.path.join(ROOT, 'sweep.py'),
    f'--config={config_file}',
    f'--sweep={sweep_file}',
    f'--workdir={tmp_path}/sweep',
    '--eval_args=--beam_size=1',
    '--parallel=2',
  ]
  first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-2000:]
  with open(tmp_path / 'sweep' / 'results.csv') as f:
    rows = {r['num_heads']: r for r in csv.DictReader(f)}
  assert rows['1']['status'] == rows['2']['status'] == 'done'
  assert float(rows['1']['bleu']) >= 0 and rows['1']['chrf'] != ''
  assert rows['3']['status'].startswith('train failed')
  assert '1 trial(s) failed' in first.stdout
  assert (tmp_path / 'sweep' / 'results.png').stat().st_size > 1000
  assert '| num_heads |' in (tmp_path / 'sweep' / 'results.md').read_text()
  second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  progress = [line for line in second.stdout.splitlines() if line.startswith('[')]
  assert sum('done (skipped)' in line for line in progress) == 2
  assert any('num_heads=3: train failed' in line for line in progress)  # retried
