"""Helpers shared by the test modules: tiny configs, a toy task and subprocess runs."""

import functools
import json
import os
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from evaluation.runs import load_params, load_run
from model.architectures import create_model
from model.transformer import TransformerConfig
from training import steps as training_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


LETTERS = 'abcdefghij'


def write_reverse_task(directory, n, seed):
  """TSV of random letter sequences -> the same letters reversed."""
  rng = np.random.default_rng(seed)
  lines = []
  for _ in range(n):
    words = list(rng.choice(list(LETTERS), size=rng.integers(3, 8)))
    lines.append(' '.join(words) + '\t' + ' '.join(reversed(words)))
  path = os.path.join(directory, f'reverse_{seed}.tsv')
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return path


def tiny_run_config(tmp_path, **overrides):
  data = tmp_path / 'data'
  data.mkdir(exist_ok=True)
  config = default.get_config()
  config.update(
    dataset='files',
    file_format='tsv',
    train_files=write_reverse_task(str(data), 400, 0),
    eval_files=write_reverse_task(str(data), 32, 1),
    eval_split='eval',
    vocab_size=24,
    emb_dim=32,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=1,
    mlp_dim=64,
    max_len=32,
    max_train_len=24,
    max_eval_len=24,
    batch_size=8,
    eval_batch_size=8,
    num_train_steps=20,
    warmup_steps=5,
    learning_rate=3e-3,
    log_every_steps=5,
    eval_every_steps=1000,
    checkpoint_every_steps=10,
    num_eval_bleu_batches=1,
    matmul_dtype='float32',  # exact float32 comparisons between code paths
    time_budget_minutes=0.0,  # steps, not this machine's speed, set the schedule
    beam_size=4,
    length_penalty=0.6,
    average_last=1,
    mbr_utility='',  # a quick decoding
    expected_result='',
  )
  config.update(overrides)
  return config


def random_batch(rows=8, length=12, seed=0):
  """A packed-format batch of random tokens, the last 3 positions padding."""
  rng = np.random.default_rng(seed)
  batch = {}
  for side in ('inputs', 'targets'):
    tokens = rng.integers(4, 24, size=(rows, length)).astype(np.int32)
    tokens[:, length - 3 :] = 0
    batch[side] = tokens
    batch[f'{side}_position'] = np.tile(np.arange(length, dtype=np.int32), (rows, 1))
    batch[f'{side}_segmentation'] = (tokens != 0).astype(np.int32)
  return batch


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r['train/loss'] for r in map(json.loads, f) if 'train/loss' in r]


def final_params(workdir):
  config, _ = load_run(str(workdir))
  _, params, _, _ = load_params(config, str(workdir))
  return params


def write_config_file(config, path):
  """A config file for train.py that returns exactly `config`."""
  json_path = str(path) + '.json'
  with open(json_path, 'w') as f:
    f.write(config.to_json())
  with open(path, 'w') as f:
    f.write(
      'import json\nimport ml_collections\n\n\ndef get_config():\n'
      f'  return ml_collections.ConfigDict(json.load(open({json_path!r})))\n'
    )
  return str(path)


def train_command(config_file, workdir, *extra):
  return [
    sys.executable,
    os.path.join(ROOT, 'train.py'),
    f'--config={config_file}',
    f'--workdir={workdir}',
    *extra,
  ]


def start(command):
  """`command` started in the repository root, its output captured as text."""
  return subprocess.Popen(
    command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
  )


def two_processes(command):
  """`command` (train.py or eval.py) as processes 0 and 1 of one run on a free local port."""
  address = f'127.0.0.1:{free_port()}'
  flags = [f'--coordinator_address={address}', '--num_processes=2']
  return [start([*command, *flags, f'--process_id={i}']) for i in range(2)]


def finish(processes, timeout=300):
  """[(stdout, stderr)] of each process; all are killed if any outlives `timeout`."""
  try:
    return [p.communicate(timeout=timeout) for p in processes]
  finally:
    for p in processes:
      p.kill()


def run_train(config_file, workdir, *extra, env=None, timeout=300):
  result = subprocess.run(
    train_command(config_file, workdir, *extra),
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  return result


def wait_for_checkpoint(workdir, step, process, timeout=180):
  path = os.path.join(workdir, 'checkpoints', str(step))
  start = time.time()
  while not os.path.isdir(path):
    if process.poll() is not None:
      raise AssertionError(
        f'train.py ended before checkpoint {step}: {process.stderr.read()[-2000:]}'
      )
    if time.time() - start > timeout:
      process.kill()
      raise AssertionError(f'no checkpoint {step} after {timeout} s')
    time.sleep(0.1)


def tiny_model_config(**overrides):
  """The model tests' TransformerConfig: small, float32, the paper's ReLU and sinusoidal
  positions, no QKNorm, with `overrides`."""
  config = default.get_config()
  config.update(
    vocab_size=50,
    emb_dim=16,
    num_heads=2,
    num_encoder_layers=2,
    num_decoder_layers=2,
    mlp_dim=32,
    max_len=24,
    activation='relu',  # the plain MLP; VARIANTS and the activation tests cover the gated
    position_embedding='sinusoidal',  # VARIANTS cover rope (the default config's)
    qk_norm=0.0,  # plain scaled dot products; VARIANTS cover QKNorm
    matmul_dtype='float32',  # exact float32 references; bfloat16 has its own tests
  )
  config.update(overrides)
  return TransformerConfig.from_config(config)


SRC = jnp.array([[5, 6, 7, 8, 1, 0], [9, 10, 1, 0, 0, 0]])


def loss_and_grads(config, chunk, rdrop_alpha=0.0):
  """training.steps.loss_and_grads of `config`'s model on `random_batch()`, jit-compiled, with
  loss_chunk_size `chunk` (0: the plain logits path)."""
  graphdef, params, rest = create_model(config, 0)
  return jax.jit(
    functools.partial(
      training_steps.loss_and_grads,
      graphdef=graphdef,
      rest=rest,
      label_smoothing=0.1,
      loss_chunk_size=chunk,
      rdrop_alpha=rdrop_alpha,
    )
  )(params, random_batch(), jax.random.key(3))
