"""Bad inputs and faults, as tables: each row is an input and the one line it must stop with.

Every row also checks that nothing is lost: no traceback, nothing written to a new workdir, and a
finished run's config, vocabulary and checkpoints byte for byte as they were. A new case is one
row. Signals (SIGTERM, SIGKILL) are tested with exact resume in test_train.py.
"""

import errno
import hashlib
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from core import checkpoints as checkpoints_lib
from core.config import ConfigError
from core.metrics_log import MetricsLog
from core.workdir import LOCK_FILE, DiskFullError
from evaluation.runs import load_params, load_run
from input_pipeline import datasets
from training.trainer import train_and_evaluate

from helpers import ROOT, run_train, tiny_run_config, write_config_file


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  """A finished run (checkpoints 10 and 20) and a config file that trains exactly its config."""
  tmp = tmp_path_factory.mktemp('finished')
  config = tiny_run_config(tmp)
  train_and_evaluate(config, str(tmp / 'run'))
  return tmp / 'run', write_config_file(config, tmp / 'tiny.py')


def fingerprint(workdir) -> dict:
  """SHA-256 of the files that make a run: config.json, tokenizer.model and checkpoints/."""
  files = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      relative = os.path.relpath(path, workdir)
      if relative in ('config.json', 'tokenizer.model') or relative.startswith('checkpoints'):
        with open(path, 'rb') as f:
          files[relative] = hashlib.sha256(f.read()).hexdigest()
  return files


def checkpoints(workdir) -> dict:
  """`fingerprint` of the checkpoints alone."""
  return {k: v for k, v in fingerprint(workdir).items() if k.startswith('checkpoints')}


def one_line_error(result) -> str:
  """The last line of a failed script's stderr, after checking it failed without a traceback."""
  assert result.returncode != 0, result.stdout[-1000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  return result.stderr.strip().splitlines()[-1]


# ----------------------------------------------------------------------------- train.py flags

# --config.field=value on a new workdir -> the start of the one line train.py stops with
BAD_CONFIGS = [
  ('--config.num_heads=3', 'error: config.num_heads=3 must divide config.emb_dim=128.'),
  (
    '--config.num_head=8',
    'error: --config.num_head is not a config field; did you mean --config.num_heads?',
  ),
  ('--config.schedule=linear', "error: config.schedule='linear' is unknown"),
  ('--config.batch_size=0', 'error: config.batch_size=0 must be a positive integer.'),
  (
    '--config.num_train_steps=400',
    'error: config.warmup_steps=1500 must be below '
    'config.num_train_steps=400 for the cosine schedule',
  ),
  ('--config.min_decode_words=-2', 'error: config.min_decode_words=-2 must be an integer >= 0'),
  (
    '--config.rdrop_alpha=5 --config.dropout_rate=0',
    'error: config.rdrop_alpha=5.0 needs dropout',
  ),
  ('--config.beam_groups=-1', 'error: config.beam_groups=-1 must be an integer >= 0 (0: auto'),
  ('--config.source_word_dropout=1.5', 'error: config.source_word_dropout=1.5 must be in [0, 1)'),
  ('--config.ema_decay=1', 'error: config.ema_decay=1.0 must be in [0, 1) (0: off'),
  (
    '--config.optimizer=adam',
    "error: config.weight_decay=0.3 must be >= 0, and needs config.optimizer='adamw'",
  ),
  (
    '--config.vocab_model_type=bpe --config.subword_sampling_alpha=1.0',
    'error: config.subword_sampling_alpha=1.0 must be >= 0 (0: off), and below 1 for a BPE',
  ),
  ('--config.task=summarisation', "error: config.task='summarisation' is unknown; use one of"),
  ('--config.seed=-1', 'error: config.seed=-1 must be an integer >= 0.'),
  ('--config.max_decode_len_a=-1', 'error: config.max_decode_len_a=-1.0 must be >= 0'),
  ('--config.mbr_utility=ter', "error: config.mbr_utility='ter' is unknown"),
  ('--config.architecture=lstm', "error: config.architecture='lstm' is unknown; use one of"),
  ('--config.remat=layers', "error: config.remat='layers' is unknown; use one of"),
  (
    '--config=configs/rnn_attention.py --config.remat=full',
    "error: config.remat='full' is built for architecture='transformer' only",
  ),
  ('--config.profile_steps=5', "error: config.profile_steps='5' is not of the form 'a:b' with"),
  (
    '--config=configs/rnn_attention.py --config.rnn_hidden_dim=255',
    'error: config.rnn_hidden_dim=255 must be even (the encoder splits it',
  ),
  (
    '--config=configs/no_such_config.py',
    'error: --config could not be loaded: [Errno 2] No such file or directory: '
    "'configs/no_such_config.py'",
  ),
]


@pytest.mark.parametrize('flag,message', BAD_CONFIGS)
def test_a_bad_config_stops_in_one_line_and_writes_nothing(tmp_path, flag, message):
  result = subprocess.run(
    [sys.executable, 'train.py', f'--workdir={tmp_path}/run', *flag.split()],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert one_line_error(result).startswith(message)
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')
  assert not os.path.exists(tmp_path / 'run' / 'config.json')


# flags of a resume of the finished run -> the start of the one line train.py stops with
BAD_RESUMES = [
  ('--config.activation=relu', 'error: --workdir={run} holds a run with config.activation='),
  ('--config.architecture=rnn', 'error: --workdir={run} holds a run with config.architecture='),
  ('--config.optimizer=adam --config.weight_decay=0', 'error: --workdir={run} holds a run with '),
  ('--config.max_decode_len_a=-1', 'error: config.max_decode_len_a=-1.0 must be >= 0'),
  ('--config.seed=-1', 'error: config.seed=-1 must be an integer >= 0.'),
  ('--config.vocab_size=30', 'error: --workdir={run} holds a run with config.vocab_size=24'),
]


@pytest.mark.parametrize('flags,message', BAD_RESUMES)
def test_a_bad_resume_stops_in_one_line_and_loses_nothing(finished, flags, message):
  workdir, config_file = finished
  before = fingerprint(workdir)
  result = run_train(config_file, workdir, '--config.num_train_steps=30', *flags.split())
  assert one_line_error(result).startswith(message.format(run=workdir))
  assert fingerprint(workdir) == before


# ----------------------------------------------------------------------------- data files

# a training file -> config overrides -> the one-line DataError (a regular expression)
BAD_DATA = [
  ('d.jsonl', '{"source": "a b", "target": null}', {}, r"d.jsonl:1: field 'target' is null, not"),
  ('d.jsonl', '["a b", "b a"]', {}, r'd.jsonl:1: expected a JSON object .* found list'),
  ('d.jsonl', '{"source": "a b"}', {}, r"d.jsonl:1: field 'target' is missing"),
  ('d.jsonl', '{"source": "a b", "target": "b a"', {}, r'd.jsonl:1: not valid JSON'),
  ('d.jsonl', '{"en": "a b", "de": "b a"}', {}, r"field 'source' is missing \(fields: \['de',"),
  ('d.tsv', 'a b\tb a\tc', {}, r'd.tsv:1: expected source<TAB>target, found 3 tab-separated'),
  ('d.tsv', 'a b c', {}, r'd.tsv:1: expected source<TAB>target, found no tab'),
  ('d.tsv', '\ta b\n\n', {}, r"d.tsv: split 'train' of 'files' has no non-empty examples"),
  ('d.tsv', 'a \udcff b\tb a', {}, r'd.tsv:1: invalid UTF-8 \(invalid start byte\)'),
  (
    'd.tsv',
    'a b c d\td c b a',
    {'max_train_len': 2, 'vocab_size': 11},
    r'no training pair fits .*=2 .*shortest',
  ),
  ('d.tsv', 'a b\tb a', {'file_format': 'csv'}, r"config.file_format='csv' is unknown"),
  ('d.tsv', 'a b\tb a', {'file_format': 'parallel'}, r'parallel files are given as "source_'),
  ('', '', {'train_files': '/no/such.tsv'}, r'data file not found: /no/such.tsv'),
]


@pytest.mark.parametrize('name,text,overrides,message', BAD_DATA)
def test_bad_data_stops_in_one_line_before_anything_is_written(
  tmp_path, name, text, overrides, message
):
  path = tmp_path / (name or 'unused')
  path.write_bytes(text.encode('utf-8', 'surrogateescape') + b'\n')
  file_format = {'.jsonl': 'jsonl', '.tsv': 'tsv'}.get(path.suffix, 'tsv')
  config = tiny_run_config(tmp_path, train_files=str(path), file_format=file_format)
  config.update(overrides)
  workdir = tmp_path / 'run'
  with pytest.raises((datasets.DataError, ConfigError)) as error:
    train_and_evaluate(config, str(workdir))
  assert re.search(message, str(error.value)) and '\n' not in str(error.value)
  assert os.listdir(workdir) == [LOCK_FILE]  # the corrected command starts afresh


# ----------------------------------------------------------------------------- eval.py requests

# eval.py flags on the finished run -> the end of the one line it stops with ({run}: its workdir)
BAD_REQUESTS = [
  (['--workdir=/no/such/run'], 'does not exist'),
  (
    ['--workdir={run}', '--split=test'],
    "unknown split 'test' for dataset 'files'; splits: ['train', 'eval']",
  ),
  (['--workdir={run}', '--eval_files=/no/such.tsv'], 'data file not found: /no/such.tsv'),
  (['--workdir={run}', '--beam_size=-1'], 'config.beam_size=-1 must be an integer >= 1'),
  (
    ['--workdir={run}', '--step=7'],
    '--step=7 has no checkpoint in {run}; available: [10, 20]',
  ),
  (['--workdir={run}', '--ensemble=/no/such/run'], '--ensemble=/no/such/run does not exist'),
  (
    ['--workdir={run}', '--ensemble={run}', '--plot_attention=a b'],
    "--plot_attention draws one model's attention; drop --ensemble",
  ),
  (
    ['--workdir={run}', '--no_repeat_ngram=-1'],
    'config.no_repeat_ngram_size=-1 must be an integer >= 0 (0: off)',
  ),
  (['--workdir={run}', '--mbr=ter'], "config.mbr_utility='ter' is unknown"),
  (
    ['--workdir={run}', '--mbr=bleu', '--beam_size=1'],
    "config.mbr_utility='bleu' chooses among the beam's hypotheses: it needs config.beam_size",
  ),
  (
    ['--workdir={run}', '--mbr=chrf', '--mbr_temperature=-1'],
    'config.mbr_temperature=-1.0 must be >= 0',
  ),
  (['--workdir={run}', '--beam_size=0'], 'config.beam_size=0 must be an integer >= 1'),
  (['--workdir={run}', '--average_last=0'], 'config.average_last=0 must be an integer >= 1'),
  (['--workdir={run}', '--eval_files=/no/such.tsv'], 'data file not found: /no/such.tsv'),
  (['--workdir={run}', '--beam_size=-1'], 'config.beam_size=-1 must be an integer >= 1'),
]


@pytest.mark.parametrize('args,message', BAD_REQUESTS)
def test_a_bad_eval_request_stops_in_one_line_and_loses_nothing(finished, args, message):
  workdir, _ = finished
  before = fingerprint(workdir)
  result = subprocess.run(
    [sys.executable, 'eval.py', *[a.format(run=workdir) for a in args]],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert message.format(run=workdir) in one_line_error(result)
  assert fingerprint(workdir) == before


def test_eval_input_that_is_not_utf8_text_is_a_one_line_error(finished):
  workdir, _ = finished
  result = subprocess.run(
    [sys.executable, 'eval.py', f'--workdir={workdir}', '--input=-'],
    cwd=ROOT,
    input=b'ok\n\xff\xfe binary\n',
    capture_output=True,
    timeout=300,
  )
  stderr = result.stderr.decode()
  assert result.returncode != 0 and 'Traceback' not in stderr
  assert stderr.strip().splitlines()[-1] == (
    'error: --input=-: line 2 is not UTF-8 text (invalid start byte); give plain text, one '
    'sentence per line.'
  )


# ----------------------------------------------------------------------------- faults


def enospc(*args, **kwargs):
  raise OSError(errno.ENOSPC, 'No space left on device', 'metrics.jsonl')


def orbax_enospc(manager, step, *args, **kwargs):
  """A checkpoint write that fills the disk half-way, as TensorStore reports it."""
  (manager.directory / f'{step}.orbax-checkpoint-tmp').mkdir()
  raise ValueError('RESOURCE_EXHAUSTED: Error writing ...: No space left on device [code=28]')


def no_free_space(path, disk_usage=shutil.disk_usage):
  return disk_usage(path)._replace(free=1000)


# what fails -> the one-line DiskFullError of resuming the finished run to step 30
DISK_FULL = [
  (
    (ocp.CheckpointManager, 'save', orbax_enospc),
    r'checkpoint step 30 does not fit in .*checkpoints \(no space left on device\); step 20, '
    r'the newest, is intact; free disk space',
  ),
  (
    (checkpoints_lib.shutil, 'disk_usage', no_free_space),
    r'checkpoint step 30 does not fit in .* \(0.0 MB free, 0.\d MB needed\); step 20, the',
  ),
  (
    (MetricsLog, 'write', enospc),
    r'^no space left on device writing metrics.jsonl; free disk space, then rerun the same',
  ),
]


@pytest.mark.parametrize('patch,message', DISK_FULL)
def test_a_full_disk_stops_in_one_line_and_the_rerun_resumes(
  finished, tmp_path, monkeypatch, patch, message
):
  source, _ = finished
  workdir = tmp_path / 'run'
  shutil.copytree(source, workdir)
  before = checkpoints(workdir)
  config = tiny_run_config(tmp_path, num_train_steps=30)
  with monkeypatch.context() as patched:
    patched.setattr(*patch)
    with pytest.raises(DiskFullError, match=message) as error:
      train_and_evaluate(config, str(workdir))
  assert '\n' not in str(error.value)
  assert checkpoints(workdir) == before  # the partial checkpoint removed, the others intact
  train_and_evaluate(config, str(workdir))  # space freed: the same command resumes
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['10', '20', '30']


def test_an_unwritable_workdir_is_a_clear_error(tmp_path):
  (tmp_path / 'a_file').write_text('')
  with pytest.raises(ConfigError, match='is not writable'):
    train_and_evaluate(tiny_run_config(tmp_path), str(tmp_path / 'a_file' / 'run'))


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
  workdir = tmp_path / 'run'
  train_and_evaluate(tiny_run_config(tmp_path), str(workdir))  # checkpoints 10 and 20
  for root, _, files in os.walk(workdir / 'checkpoints' / '20' / 'state'):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'garbage')
  train_and_evaluate(tiny_run_config(tmp_path, num_train_steps=30), str(workdir))
  out = capsys.readouterr().out
  assert 'checkpoint step 20 failed to restore' in out
  assert 'resumed from step 10' in out
  assert os.path.isdir(workdir / 'checkpoints' / 'corrupt_20')  # kept, never deleted
  assert {'10', '20', '30'} <= set(os.listdir(workdir / 'checkpoints'))


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  """A diverging run (learning rate 1e30) stops at the first loss or parameters that are not
  finite; every checkpoint it kept holds finite parameters, and the message names the newest."""
  config = tiny_run_config(
    tmp_path,
    learning_rate=1e30,
    warmup_steps=0,
    grad_clip_norm=0.0,
    checkpoint_every_steps=1,
    log_every_steps=100,
    num_train_steps=50,
  )
  workdir = tmp_path / 'run'
  with pytest.raises(
    FloatingPointError,
    match=r'(loss is (nan|inf) at step \d+|the parameters are not finite after step \d+, not '
    r'saved); stopping\. The last good checkpoint \(step (\d+)\) is kept\.',
  ) as error:
    train_and_evaluate(config, str(workdir))
  kept = int(re.search(r'checkpoint \(step (\d+)\)', str(error.value)).group(1))
  saved = sorted(int(s) for s in os.listdir(workdir / 'checkpoints') if s.isdigit())
  assert saved and saved[-1] == kept
  run_config, _ = load_run(str(workdir))
  for step in saved:
    _, params, _, _ = load_params(run_config, str(workdir), step=step)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params))


def test_a_run_that_diverges_before_its_first_checkpoint_says_none_was_saved(tmp_path):
  config = tiny_run_config(
    tmp_path,
    learning_rate=1e30,
    warmup_steps=0,
    grad_clip_norm=0.0,
    checkpoint_every_steps=1000,
    log_every_steps=1,
    num_train_steps=50,
  )
  with pytest.raises(FloatingPointError, match='stopping. No checkpoint had been saved.'):
    train_and_evaluate(config, str(tmp_path / 'run'))
