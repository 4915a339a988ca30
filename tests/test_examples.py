"""The README's own-data workflow on data/examples/, run line by line exactly as written."""

import os
import re
import subprocess
import sys

from helpers import ROOT


def readme_commands(section: str) -> list:
  """The shell lines of the first code block under `section` in README.md, continuations
  joined."""
  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  block = re.search(r'```\n(.*?)```', text[text.index(section) :], re.S).group(1)
  return [line for line in block.replace('\\\n', ' ').splitlines() if line.strip()]


def test_the_own_data_workflow_in_the_readme_runs_as_written(tmp_path):
  lines = readme_commands('## Your own data')
  assert len(lines) == 4 and lines[0].startswith('.venv/bin/python train.py')
  workdir = tmp_path / 'example'
  outputs = []
  for line in lines:  # the workdir in tmp_path; the Python running this test
    line = line.replace('runs/example', str(workdir)).replace('.venv/bin/python', sys.executable)
    result = subprocess.run(
      ['bash', '-o', 'pipefail', '-c', line],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert result.returncode == 0, f'{line}\n{result.stderr[-3000:]}'
    outputs.append(result.stdout)
  train, dev, test, translations = outputs
  assert 'step 60/60' in train
  assert dev.startswith('val: 50 examples, beam 4') and '  bleu ' in dev and '  chrf ' in dev
  assert test.startswith('test.tsv: 50 examples, beam 20') and 'MBR bleu' in test
  assert len(translations.splitlines()) == 3
  assert (workdir / 'eval' / 'test.tsv.step60.beam20.alpha1.5.mbr-bleu.t0.15.txt').exists()
