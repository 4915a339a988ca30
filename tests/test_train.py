"""train.py: learning, determinism, exact resume, signals, sharding, and failure behaviour.

Runs that must be a separate process (SIGKILL, SIGTERM, 8 simulated devices, 2 processes) use
subprocesses with timeouts; the rest call train_and_evaluate in-process.
"""

import fcntl
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from core.checkpoints import Checkpoints
from core.config import ConfigError, save_config
from core.parallel import make_mesh, to_host
from core.workdir import LOCK_FILE
from input_pipeline import datasets
from input_pipeline import tokenizer as tokenizer_lib
from model.architectures import create_model
from training import steps as training_steps
from training.checks import check_resume, validate_training_config
from training.data import SAMPLES_DIR, load_data
from training.optimizer import create_learning_rate_schedule, decays_weight
from training.steps import create_training
from training.time_budget import TimeBudget, budget_position
from training.trainer import train_and_evaluate

from helpers import (
  ROOT,
  final_params,
  finish,
  loss_and_grads,
  losses,
  random_batch,
  run_train,
  start,
  tiny_run_config,
  train_command,
  two_processes,
  wait_for_checkpoint,
  write_config_file,
)

# ----------------------------------------------------------------------------- subprocess runs


# ----------------------------------------------------------------------------- learning


def test_a_few_steps_lower_the_loss(tmp_path):
  tensorflow_before = 'tensorflow' in sys.modules  # another test may have imported it
  train_and_evaluate(tiny_run_config(tmp_path, num_train_steps=30), str(tmp_path / 'run'))
  history = losses(tmp_path / 'run')
  assert history[-1] < history[0] - 0.3
  assert tensorflow_before or 'tensorflow' not in sys.modules  # training doesn't (~600 MB RSS)
  # TensorBoard reads the same scalars as metrics.jsonl
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top

  events = event_accumulator.EventAccumulator(str(tmp_path / 'run'))
  events.Reload()
  np.testing.assert_allclose([e.value for e in events.Scalars('train/loss')], history, rtol=1e-6)


@pytest.mark.slow
def test_tiny_model_learns_to_reverse_sequences(tmp_path):
  config = tiny_run_config(
    tmp_path,
    num_train_steps=1000,
    learning_rate=1e-2,
    warmup_steps=50,
    label_smoothing=0.0,
    dropout_rate=0.0,
    emb_dim=64,
    mlp_dim=128,
    num_heads=4,
    num_encoder_layers=2,
    num_decoder_layers=2,
    log_every_steps=100,
    checkpoint_every_steps=1000,
    num_eval_bleu_batches=4,
  )
  metrics = train_and_evaluate(config, str(tmp_path / 'run'))
  assert metrics['train/nll'] < 0.05
  assert metrics['eval/nll'] < 0.1
  assert metrics['eval/bleu'] > 90


def assert_same_loss_and_grads(result_a, result_b):
  (value_a, grads_a), (value_b, grads_b) = result_a, result_b
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), value_a, value_b)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads_a))
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale), grads_a, grads_b
  )


@pytest.mark.parametrize('tie,rdrop_alpha', [(True, 0.0), (False, 0.0), (True, 5.0)])
def test_fused_loss_equals_plain_loss_with_gradients(tmp_path, tie, rdrop_alpha):
  """loss_chunk_size > 0 (fused chunked loss) and 0 (plain logits): same loss and gradients,
  with and without R-Drop."""
  config = tiny_run_config(tmp_path, tie_output_embedding=tie, dropout_rate=0.2)
  assert_same_loss_and_grads(*[loss_and_grads(config, chunk, rdrop_alpha) for chunk in (0, 16)])


@pytest.mark.parametrize('remat', ['full', 'dots'])
def test_remat_gives_the_same_loss_and_gradients(tmp_path, remat):
  """Rematerialised layers recompute in the backward pass what they would have stored: the same
  loss and gradients in float32, with dropout drawing the same masks, with copy attention too
  (the cross-attention weights leave the rematerialised layer)."""
  config = tiny_run_config(tmp_path, dropout_rate=0.2, copy_attention=True, num_encoder_layers=2)
  plain = loss_and_grads(config, 0)
  config.remat = remat
  assert_same_loss_and_grads(plain, loss_and_grads(config, 0))
  # and the layers are rematerialised: each (two encoder, one decoder) is one `checkpoint` (the
  # primitive of jax.checkpoint, printed remat2) in the program
  graphdef, params, rest = create_model(config, 0)
  batch = random_batch()
  forward = lambda p: nnx.merge(graphdef, p, rest)(batch['inputs'], batch['targets'])
  assert len(re.findall(r'\b(?:remat\w*|checkpoint)\[', str(jax.make_jaxpr(forward)(params)))) == 3


def test_profile_steps_write_a_trace_of_those_steps(tmp_path):
  """config.profile_steps='2:4' traces steps 3 and 4 into <workdir>/plugins/profile/<time>/:
  an XPlane file for TensorBoard and a Perfetto trace; the run goes on and finishes."""
  workdir = str(tmp_path / 'run')
  config = tiny_run_config(tmp_path, num_train_steps=6, profile_steps='2:4', log_every_steps=1)
  train_and_evaluate(config, workdir)
  (trace,) = os.listdir(os.path.join(workdir, 'plugins', 'profile'))
  files = os.listdir(os.path.join(workdir, 'plugins', 'profile', trace))
  assert any(f.endswith('.xplane.pb') for f in files), files
  assert 'perfetto_trace.json.gz' in files
  assert len(losses(workdir)) == 6


def test_rdrop_without_dropout_is_the_plain_loss(tmp_path):
  """Without dropout both passes of a row are the same, so R-Drop's KL and its gradient vanish:
  the batch doubling pairs each row with its own copy."""
  config = tiny_run_config(tmp_path, dropout_rate=0.0)
  assert_same_loss_and_grads(loss_and_grads(config, 16), loss_and_grads(config, 16, 5.0))
  # with dropout the two passes differ and the KL term raises the loss
  config = tiny_run_config(tmp_path, dropout_rate=0.2)
  (rdrop, _), (plain, _) = loss_and_grads(config, 16, 5.0), loss_and_grads(config, 16, 0.0)
  assert rdrop[0] > plain[0]


def test_ema_params_are_the_moving_average_and_leave_training_unchanged(tmp_path):
  """With ema_decay the state also carries e_{t+1} = d_t e_t + (1 - d_t) p_{t+1} from e_0 = p_0,
  d_t = min(ema_decay, (1 + t) / (10 + t)) (NumPy below), and the parameters themselves follow
  exactly the steps of a run without it."""
  ema_decay = 0.15  # the ramp (1 + t) / (10 + t) is 0.1 at t = 0, then the cap binds
  batch = random_batch()
  trajectories = {}
  for decay in (0.0, ema_decay):
    training = create_training(tiny_run_config(tmp_path, ema_decay=decay), make_mesh())
    state = training.state
    params = [to_host(state['params'])]
    for _ in range(4):
      state, _ = training.step_fn(state, batch, 0.0)
      params.append(to_host(state['params']))
    trajectories[decay] = (params, to_host(state.get('ema_params')))
  (plain, no_ema), (params, ema) = trajectories[0.0], trajectories[ema_decay]
  assert no_ema is None
  jax.tree.map(np.testing.assert_array_equal, params[-1], plain[-1])
  expected = params[0]
  for t in range(4):
    d = min(ema_decay, (1 + t) / (10 + t))
    expected = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * p, expected, params[t + 1])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), ema, expected)
  assert not np.allclose(jax.tree.leaves(ema)[0], jax.tree.leaves(params[-1])[0])


def test_adamw_decays_kernels_and_embeddings_but_not_biases_and_norms(tmp_path):
  """One step of adamw is adam's step minus lr x weight_decay x the old value (decoupled decay,
  Loshchilov and Hutter 2019) on kernels and the embedding table; biases and norm scales take
  adam's step unchanged."""
  lr, weight_decay, batch = 1e-3, 0.1, random_batch()
  overrides = dict(learning_rate=lr, schedule='constant', warmup_steps=0)
  after = {}
  for optimizer, decay in (('adam', 0.0), ('adamw', weight_decay)):
    config = tiny_run_config(tmp_path, optimizer=optimizer, weight_decay=decay, **overrides)
    training = create_training(config, make_mesh())
    state, metrics = training.step_fn(training.state, batch, 0.0)  # warmup: step 0 has lr 0,
    before = to_host(state['params'])  # so both runs start step 1 from the same values
    state, metrics = training.step_fn(state, batch, 0.0)
    assert float(metrics['learning_rate']) == pytest.approx(lr)
    after[optimizer] = to_host(state['params'])
  decayed = []
  leaves = jax.tree_util.tree_flatten_with_path(before)[0]
  for (path, old), adam, adamw in zip(
    leaves, jax.tree.leaves(after['adam']), jax.tree.leaves(after['adamw'])
  ):
    name = jax.tree_util.keystr(path)
    decays = 'kernel' in name or 'embedding' in name
    decayed.append(decays)
    expected = adam - lr * weight_decay * old if decays else adam
    np.testing.assert_allclose(adamw, expected, rtol=1e-6, atol=1e-9, err_msg=name)
  assert any(decayed) and not all(decayed)


@pytest.mark.parametrize('optimizer,weight_decay', [('adam', 0.0), ('adamw', 0.1)])
def test_the_step_is_optax_adam_or_adamw_with_the_schedule(tmp_path, optimizer, weight_decay):
  """train_step applies the learning rate itself (create_optimizer has none, see TimeBudget);
  step for step its parameters are those of optax's own adam / adamw with the schedule after
  global-norm clipping, fed the same gradients: the second code path."""
  # adam_eps 1e-3: with the default 1e-9, Adam's first steps divide near-zero gradients by their
  # own size, so rounding differences between the two programs' gradients change them wholesale
  config = tiny_run_config(
    tmp_path,
    optimizer=optimizer,
    weight_decay=weight_decay,
    dropout_rate=0.0,
    warmup_steps=2,
    grad_clip_norm=0.5,
    adam_eps=1e-3,
  )
  training = create_training(config, make_mesh())
  schedule = create_learning_rate_schedule(config)
  hyper = dict(b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
  reference = optax.chain(
    optax.clip_by_global_norm(0.5),
    optax.adamw(schedule, weight_decay=weight_decay, mask=decays_weight, **hyper)
    if optimizer == 'adamw'
    else optax.adam(schedule, **hyper),
  )
  grads_fn = jax.jit(
    functools.partial(
      training_steps.loss_and_grads,
      graphdef=training.graphdef,
      rest=training.rest,
      label_smoothing=config.label_smoothing,
      loss_chunk_size=config.loss_chunk_size,
    )
  )
  batch, state = random_batch(), training.state
  params = jax.tree.map(np.array, to_host(state['params']))  # a copy: the step donates
  reference_state = reference.init(params)
  for _ in range(4):
    _, grads = grads_fn(params, batch, jax.random.key(0))  # no dropout: the key is unused
    updates, reference_state = reference.update(grads, reference_state, params)
    params = optax.apply_updates(params, updates)
    state, _ = training.step_fn(state, batch, 0.0)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
    to_host(state['params']),
    params,
  )


def test_accumulated_micro_batches_make_the_update_of_one_batch_k_times_larger(tmp_path):
  """grad_accum_steps=2 on two micro-batches of 8 rows (with different numbers of target
  tokens) gives the loss, gradient norm and new parameters of one step on the 16 rows (dropout
  off, float32); and a run with it trains through the loop."""
  batch = random_batch(rows=16)
  for side in ('inputs', 'targets'):  # the second half holds fewer tokens
    batch[side][8:, 5:] = 0
    batch[f'{side}_segmentation'] = (batch[side] != 0).astype(np.int32)
  micro = {k: v.reshape(2, 8, *v.shape[1:]) for k, v in batch.items()}
  results = []
  for k, inputs in ((1, batch), (2, micro)):
    config = tiny_run_config(tmp_path, dropout_rate=0.0, grad_accum_steps=k, adam_eps=1e-3)
    training = create_training(config, make_mesh())
    state, metrics = training.step_fn(training.state, inputs, 0.0)
    results.append((to_host(metrics), to_host(state['params'])))
  (one, params_one), (accumulated, params_accumulated) = results
  assert accumulated['tokens'] == one['tokens'] == (batch['targets_segmentation'] > 0).sum()
  for key in ('loss', 'nll', 'accuracy', 'grad_norm'):
    np.testing.assert_allclose(accumulated[key], one[key], rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
    params_accumulated,
    params_one,
  )
  workdir = str(tmp_path / 'run')
  train_and_evaluate(tiny_run_config(tmp_path, grad_accum_steps=2, num_train_steps=10), workdir)
  assert len(losses(workdir)) == 2 and losses(workdir)[-1] < losses(workdir)[0]


def test_the_time_position_moves_the_schedule_ahead_of_the_step(tmp_path):
  """The learning rate is schedule(max(step, time_position))."""
  config = tiny_run_config(tmp_path, num_train_steps=100, warmup_steps=10)
  training = create_training(config, make_mesh())
  schedule = create_learning_rate_schedule(config)
  state, batch = training.state, random_batch()
  for step, position, expected in ((0, 0.0, 0), (1, 50.0, 50), (2, 1.0, 2), (3, 99.5, 99.5)):
    state, metrics = training.step_fn(state, batch, position)
    assert float(metrics['learning_rate']) == pytest.approx(float(schedule(expected))), step
  assert float(schedule(50)) > 0 and float(schedule(100)) == 0


def test_budget_position_is_the_spent_share_of_the_training_time():
  """Arguments: elapsed, the schedule clock's start, reserve, budget (seconds), steps."""
  assert budget_position(1e6, 0.0, 0.0, 0.0, 1000) == (0.0, False)  # no budget
  assert budget_position(30.0, None, 0.0, 60.0, 1000) == (0.0, False)  # clock not started
  assert budget_position(70.0, None, 0.0, 60.0, 1000) == (0.0, True)
  assert budget_position(30.0, 0.0, 0.0, 60.0, 1000) == (500.0, False)
  assert budget_position(30.0, 0.0, 10.0, 60.0, 1000) == (600.0, False)
  assert budget_position(30.0, 10.0, 10.0, 60.0, 1000) == (500.0, False)
  assert budget_position(50.0, 10.0, 10.0, 60.0, 1000) == (1000.0, True)
  assert budget_position(70.0, 0.0, 0.0, 60.0, 1000) == (1000.0, True)


def test_a_time_budget_stops_the_run_and_survives_a_resume(tmp_path, monkeypatch, capsys):
  """On a clock that gains a second at every reading (one reading per logged step here), a
  half-minute budget stops a 1000-step run after ~30 steps with a final checkpoint and
  validation, the schedule having followed the clock to the end of its decay; a rerun finds
  the budget spent (the elapsed time is checkpointed) and trains nothing."""
  ticks = iter(range(10**6))
  monkeypatch.setattr(TimeBudget, 'clock', staticmethod(lambda: float(next(ticks))))
  config = tiny_run_config(
    tmp_path,
    num_train_steps=1000,
    warmup_steps=5,
    log_every_steps=1,
    checkpoint_every_steps=1000,
    time_budget_minutes=0.5,
  )
  workdir = str(tmp_path / 'run')
  metrics = train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    logged = [r for r in map(json.loads, f) if 'train/loss' in r]
  stop = logged[-1]['step']
  assert 20 < stop < 40 and 'eval/nll' in metrics
  assert Checkpoints(workdir, 10).manager.latest_step() == stop
  schedule = create_learning_rate_schedule(config)
  assert logged[-1]['train/learning_rate'] < 0.02 * config.learning_rate < float(schedule(stop))
  assert f'time budget of 0.5 min spent at step {stop}' in capsys.readouterr().out
  train_and_evaluate(config, workdir)
  assert f'the time budget was spent at step {stop}: nothing to train' in capsys.readouterr().out
  assert Checkpoints(workdir, 10).manager.latest_step() == stop
  with pytest.raises(ConfigError, match=r'time_budget_minutes=-1.0 must be >= 0'):
    validate_training_config(tiny_run_config(tmp_path, time_budget_minutes=-1.0))


@pytest.mark.parametrize('field,on,other', [('ema_decay', 0.999, 0.9995), ('qk_norm', 10.0, 5.0)])
def test_resuming_with_the_moving_average_or_qk_norm_turned_on_or_off_is_refused(
  tmp_path, field, on, other
):
  """The average's (QKNorm's scales') presence shapes the checkpoints, so a resume may change
  the value, not switch it (the checkpoints' structure would not match the state's)."""
  for saved, resumed, ok in ((0.0, on, False), (on, 0.0, False), (on, other, True)):
    workdir = str(tmp_path / f'run_{saved}_{resumed}')
    os.makedirs(workdir)
    save_config(tiny_run_config(tmp_path, **{field: saved}), workdir)
    if ok:
      check_resume(tiny_run_config(tmp_path, **{field: resumed}), workdir)
      continue
    with pytest.raises(ConfigError) as error:
      check_resume(tiny_run_config(tmp_path, **{field: resumed}), workdir)
    assert str(error.value).startswith(
      f'--workdir={workdir} holds a run with config.{field}={saved!r}, not {resumed!r}'
    )
  # a run whose config.json lacks the field was written by another layout: named, not guessed
  workdir = tmp_path / 'old_run'
  workdir.mkdir()
  fields = tiny_run_config(tmp_path, **{field: 0.0}).to_dict()
  del fields[field]
  (workdir / 'config.json').write_text(json.dumps(fields))
  with pytest.raises(ConfigError, match=f'config.json lacks config.{field}:'):
    check_resume(tiny_run_config(tmp_path, **{field: on}), str(workdir))


@pytest.mark.parametrize(
  'field,value,refused',
  [
    ('activation', 'relu', True),
    ('optimizer', 'adam', True),
    ('grad_clip_norm', 0.0, True),
    ('num_heads', 4, True),
    ('num_decoder_layers', 2, True),
    ('param_dtype', 'bfloat16', True),
    ('share_embeddings', False, True),
    ('lowercase', True, True),
    ('learning_rate', 1e-3, False),
    ('seed', 3, False),
    ('dropout_rate', 0.3, False),
    ('num_train_steps', 50, False),
    ('matmul_dtype', 'bfloat16', False),
    ('max_len', 40, False),  # sinusoidal positions: a table computed, not checkpointed
  ],
)
def test_a_resume_refuses_exactly_the_fields_that_change_the_state_or_the_text(
  tmp_path, field, value, refused
):
  """Which fields a resume refuses is derived from the state each value builds: a new field
  that changes the parameters or optimizer state is refused without being listed anywhere."""
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  save_config(tiny_run_config(tmp_path), workdir)
  config = tiny_run_config(tmp_path, **{field: value})
  if not refused:
    check_resume(config, workdir)
    return
  with pytest.raises(ConfigError, match=f'holds a run with config.{field}=.*, not {value!r}'):
    check_resume(config, workdir)


def test_a_refused_resume_keeps_every_checkpoint_and_the_config(tmp_path):
  """The run is never thrown away: a resume with a changed structural field stops before
  writing anything, and a checkpoint that does not fit the config (here config.json edited
  by hand) stops the restore without being moved aside as corrupt."""
  workdir = tmp_path / 'run'
  train_and_evaluate(tiny_run_config(tmp_path, num_train_steps=20), str(workdir))
  before = sorted(os.listdir(workdir / 'checkpoints')), (workdir / 'config.json').read_text()
  relu = tiny_run_config(tmp_path, num_train_steps=30, activation='relu')
  with pytest.raises(ConfigError, match="holds a run with config.activation='swiglu', not 'relu'"):
    train_and_evaluate(relu, str(workdir))
  after = sorted(os.listdir(workdir / 'checkpoints')), (workdir / 'config.json').read_text()
  assert after == before
  save_config(tiny_run_config(tmp_path, num_train_steps=20, activation='relu'), str(workdir))
  with pytest.raises(
    ConfigError,
    match='checkpoint step 20 .* holds a training state that this '
    'config does not build .*wi_gate.*nothing was moved',
  ):
    train_and_evaluate(relu, str(workdir))
  assert sorted(os.listdir(workdir / 'checkpoints')) == before[0]


def test_a_second_train_on_a_workdir_in_use_stops_naming_the_first(tmp_path):
  """The workdir lock: while one process holds it, train.py stops in one line that names the
  holder, before anything is written; a lock file left by a process that is gone (no lock
  held on it) is taken over."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  lock = workdir / LOCK_FILE
  lock.write_text('train.py, process 4242 on elsewhere since 2026-01-01 00:00:00')
  with open(lock) as holder:  # another open file description: as a second process would
    fcntl.flock(holder, fcntl.LOCK_EX)
    with pytest.raises(
      ConfigError, match=f'--workdir={workdir} is in use by train.py, process 4242 on elsewhere'
    ):
      train_and_evaluate(tiny_run_config(tmp_path, num_train_steps=10), str(workdir))
  assert sorted(os.listdir(workdir)) == [LOCK_FILE]
  train_and_evaluate(tiny_run_config(tmp_path, num_train_steps=10), str(workdir))  # stale: taken
  assert os.path.isdir(workdir / 'checkpoints' / '10')
  assert f'process {os.getpid()} on ' in lock.read_text()


def test_a_vocabulary_too_large_for_the_data_names_the_largest_that_fits(tmp_path):
  """A first run on a small corpus with too large a vocabulary stops in one line that names the
  largest size that fits, having written nothing the corrected command would trip over."""
  data = tmp_path / 'pairs.tsv'
  data.write_text('a small house\tein kleines Haus\nthe red car\tdas rote Auto\n')
  config = tiny_run_config(tmp_path, train_files=str(data), eval_files=str(data), vocab_size=8000)
  workdir = tmp_path / 'run'
  with pytest.raises(
    datasets.DataError,
    match=r'config.vocab_size=8000 is more pieces than the '
    r'training text allows \(4 texts\): at most (\d+); set',
  ) as error:
    train_and_evaluate(config, str(workdir))
  assert sorted(os.listdir(workdir)) == [LOCK_FILE]
  largest = int(re.search(r'at most (\d+)', str(error.value)).group(1))
  config.update(vocab_size=largest, num_train_steps=5, warmup_steps=2)
  train_and_evaluate(config, str(workdir))
  assert os.path.isdir(workdir / 'checkpoints' / '5')


@pytest.mark.parametrize('copy', [False, True])
def test_summarization_runs_log_validation_rouge(tmp_path, copy):
  config = tiny_run_config(
    tmp_path, task='summarization', num_train_steps=10, eval_every_steps=10, copy_attention=copy
  )
  metrics = train_and_evaluate(config, str(tmp_path / 'run'))
  for name in ('rouge1', 'rouge2', 'rougeLsum'):
    assert 0 <= metrics[f'eval/{name}'] <= 100
  history = losses(tmp_path / 'run')
  assert np.all(np.isfinite(history)) and history[-1] < history[0]


def test_gap_sentences_join_the_training_pairs_and_nothing_else(tmp_path):
  # jsonl bodies of one line (no gap sentence) and of two lines (the first is masked: equal
  # scores keep the first); the training pairs are the real ones plus one per two-line body.
  records = [{'source': 'a b c d', 'target': 'a b'}] * 80 + [
    {'source': 'b c d e\ne d c', 'target': 'c d'}
  ] * 40
  path = tmp_path / 'train.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))
  config = tiny_run_config(
    tmp_path,
    file_format='jsonl',
    train_files=str(path),
    eval_files=str(path),
    gap_sentences=True,
    max_target_len=12,
    vocab_size=12,
  )
  messages = []
  train_iter, tok, _ = load_data(config, str(tmp_path), messages.append)
  assert '120 pairs + 40 gap-sentence pairs' in messages[0]
  texts = [(r['source'], r['target']) for r in records] + [('<mask>\ne d c', 'b c d e')] * 40
  expected = [tuple(map(tuple, tok.encode(list(pair)))) for pair in texts]
  got = [(tuple(s), tuple(t)) for s, t in zip(train_iter.sources, train_iter.targets)]
  assert sorted(got) == sorted(expected)


def test_same_config_and_seed_give_the_same_losses(tmp_path):
  """Also with the second run prepared first (--prepare_only: config, data, vocabulary)."""
  config = tiny_run_config(tmp_path)
  train_and_evaluate(config, str(tmp_path / 'a'))
  assert train_and_evaluate(config, str(tmp_path / 'b'), prepare_only=True) == {}
  assert {'config.json', 'tokenizer.model'} <= set(os.listdir(tmp_path / 'b'))
  assert not os.path.exists(tmp_path / 'b' / 'checkpoints')
  train_and_evaluate(config, str(tmp_path / 'b'))
  assert losses(tmp_path / 'a') == losses(tmp_path / 'b')
  other = tiny_run_config(tmp_path, seed=1)
  train_and_evaluate(other, str(tmp_path / 'c'))
  assert losses(tmp_path / 'c') != losses(tmp_path / 'a')


# ----------------------------------------------------------------------------- resume and signals


@pytest.mark.slow
def test_sigkill_then_rerun_ends_with_the_same_parameters(tmp_path):
  config = tiny_run_config(
    tmp_path, num_train_steps=400, checkpoint_every_steps=20, log_every_steps=20, dropout_rate=0.2
  )
  config_file = write_config_file(config, tmp_path / 'cfg.py')
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  assert run_train(config_file, straight).returncode == 0
  process = start(train_command(config_file, killed))
  wait_for_checkpoint(str(killed), 40, process)
  process.send_signal(signal.SIGKILL)
  process.wait(timeout=30)
  steps = sorted(int(s) for s in os.listdir(killed / 'checkpoints') if s.isdigit())
  assert steps[-1] < 400, 'the run finished before it was killed'
  resumed = run_train(config_file, killed)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f'resumed from step {steps[-1]}' in resumed.stdout
  a, b = final_params(straight), final_params(killed)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6, rtol=0)
  assert losses(straight)[-1] == losses(killed)[-1]


def test_subword_samples_saved_in_the_workdir_make_a_resumed_run_exact(tmp_path):
  """A draw cannot be redone from a seed; a resume reads its epoch's draw from the workdir."""
  config = tiny_run_config(tmp_path, num_train_steps=80, subword_sampling_alpha=0.5)
  straight = tmp_path / 'straight'
  train_and_evaluate(config, str(straight))
  samples = sorted(os.listdir(straight / SAMPLES_DIR))
  assert len(samples) == 2 and 'epoch_0.npz' not in samples  # the last two epochs of ~4
  for name, keep_samples in (('resumed', True), ('resampled', False)):
    shutil.copytree(straight, tmp_path / name)
    shutil.rmtree(tmp_path / name / 'checkpoints' / '80')  # resumes from step 70
    if not keep_samples:
      shutil.rmtree(tmp_path / name / SAMPLES_DIR)
    train_and_evaluate(config, str(tmp_path / name))
  leaves = [
    jax.tree.leaves(final_params(tmp_path / name)) for name in ('straight', 'resumed', 'resampled')
  ]
  for x, y in zip(leaves[0], leaves[1]):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert any(not np.array_equal(x, y) for x, y in zip(leaves[0], leaves[2]))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
  config = tiny_run_config(tmp_path, num_train_steps=100000, checkpoint_every_steps=20)
  config_file = write_config_file(config, tmp_path / 'cfg.py')
  workdir = tmp_path / 'run'
  process = start(train_command(config_file, workdir))
  wait_for_checkpoint(str(workdir), 20, process)
  process.send_signal(signal.SIGTERM)
  stdout, stderr = process.communicate(timeout=60)
  assert process.returncode == 0, stderr[-2000:]
  assert 'received signal 15: saved checkpoint at step' in stdout
  saved = int(stdout.split('saved checkpoint at step ')[1].split(';')[0])
  assert os.path.isdir(workdir / 'checkpoints' / str(saved))


# ----------------------------------------------------------------------------- sharding


@pytest.mark.slow
def test_eight_devices_give_the_same_losses_as_one(tmp_path):
  """train.py end to end (data, steps, checkpoints, validation, decoding) on 8 simulated
  devices as a (data 2, fsdp 2, tensor 2) mesh: the losses of one device."""
  config = tiny_run_config(tmp_path, num_train_steps=10, checkpoint_every_steps=10, num_heads=4)
  config_file = write_config_file(config, tmp_path / 'cfg.py')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  one = run_train(config_file, tmp_path / 'one')
  eight = run_train(
    config_file, tmp_path / 'eight', '--config.mesh=data:2,fsdp:2,tensor:2', env=env
  )
  assert one.returncode == 0 and eight.returncode == 0, eight.stderr[-2000:]
  assert '8 devices' in eight.stdout and 'mesh data 2 x fsdp 2 x tensor 2' in eight.stdout
  np.testing.assert_allclose(losses(tmp_path / 'eight'), losses(tmp_path / 'one'), rtol=1e-5)


MESHES = {  # (data, fsdp, tensor) -> the share of the parameters each device holds, at most
  'data:8,fsdp:1,tensor:1': 1,
  'data:2,fsdp:4,tensor:1': 1 / 4,
  'data:2,fsdp:2,tensor:2': 1 / 4,
  'data:1,fsdp:2,tensor:4': 1 / 8,
}


def test_sharded_meshes_give_one_devices_losses_and_hold_their_share():
  """On 8 simulated devices, for each mesh: 20 steps give one device's losses; each device
  holds about its share of the parameters and optimizer moments (read from the arrays'
  addressable shards, as train.py reports it; a few small vectors stay whole); and a
  checkpoint saved with fsdp over
  8 devices restores on one device, and that one's on a (2, 2, 2) mesh, bit for bit."""
  result = subprocess.run(
    [sys.executable, 'sharded_steps.py', *MESHES],
    cwd=os.path.join(ROOT, 'tests'),
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads(result.stdout.splitlines()[-1])
  for mesh, share in MESHES.items():
    np.testing.assert_allclose(results[mesh]['losses'], results['one'], rtol=1e-5)
    for part in ('params', 'opt_state'):
      held, said, whole = results[mesh][part]
      assert held == said and share * whole <= held <= 1.1 * share * whole, (mesh, part)
  assert results['restored_equal'] == [True, True] and results['restored_sharded']


@pytest.mark.slow
def test_two_processes_give_the_same_losses_as_one(tmp_path):
  """With subword sampling: both processes read process 0's draw, which the one-process run
  then reuses (a process that drew its own would pack other rows). A time budget that never
  binds: the processes agree on its clock at every logged step, and its position stays below
  the step, so the rates are the step's."""
  config = tiny_run_config(
    tmp_path,
    num_train_steps=15,
    checkpoint_every_steps=15,
    subword_sampling_alpha=0.5,
    time_budget_minutes=1e6,
  )
  config_file = write_config_file(config, tmp_path / 'cfg.py')
  workdir = tmp_path / 'multi'
  processes = two_processes(train_command(config_file, workdir))
  outputs = finish(processes)
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  assert '2 devices (cpu), 2 processes' in outputs[0][0]
  shutil.copytree(workdir / SAMPLES_DIR, tmp_path / 'single' / SAMPLES_DIR)
  single = run_train(config_file, tmp_path / 'single')
  assert single.returncode == 0, single.stderr[-2000:]
  np.testing.assert_allclose(losses(workdir), losses(tmp_path / 'single'), rtol=1e-5)


@pytest.mark.slow
def test_a_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path):
  """A preemption that reaches one host: both processes save the same step (a log step, where
  they agree) and exit 0; the same command resumes there."""
  config = tiny_run_config(tmp_path, num_train_steps=100000, checkpoint_every_steps=10)
  config_file = write_config_file(config, tmp_path / 'cfg.py')
  workdir = tmp_path / 'run'
  processes = two_processes(train_command(config_file, workdir))
  wait_for_checkpoint(str(workdir), 10, processes[0])
  processes[1].send_signal(signal.SIGTERM)
  outputs = finish(processes, timeout=120)
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  saved = re.search(
    r'received signal 15 \(process 1\): saved checkpoint at step (\d+);', outputs[0][0]
  )
  step = int(saved.group(1))
  assert step % config.log_every_steps == 0 and os.path.isdir(workdir / 'checkpoints' / str(step))
  config.num_train_steps = step + 5
  write_config_file(config, tmp_path / 'cfg.py')
  outputs = finish(two_processes(train_command(config_file, workdir)))
  assert f'resumed from step {step} ' in outputs[0][0], outputs[0][1][-3000:]


@pytest.mark.slow
def test_make_train_ensemble_trains_the_seeds_at_once_on_one_vocabulary(tmp_path):
  config_file = write_config_file(tiny_run_config(tmp_path), tmp_path / 'tiny.py')
  ensemble = tmp_path / 'ens'
  result = subprocess.run(
    [
      'make',
      '-o',
      '.venv/.installed',
      'train-ensemble',
      f'PY={sys.executable}',
      f'CONFIG={config_file}',
      f'ENSEMBLE_DIR={ensemble}',
      'ENSEMBLE_SEEDS=0 2',
      'ENSEMBLE_FLAGS=--config.num_train_steps=20',
      'ENSEMBLE_EVAL=--split=eval --beam_size=2 --average_last=2',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  members = [ensemble / 'seed0', ensemble / 'seed2']
  vocabularies = [tokenizer_lib.Tokenizer(str(m / 'tokenizer.model')).vocabulary() for m in members]
  assert vocabularies[0] == vocabularies[1]
  assert [json.load(open(m / 'config.json'))['seed'] for m in members] == [0, 2]
  assert all(losses(m)[-1] < losses(m)[0] for m in members)
  assert losses(members[0]) != losses(members[1])
  (report,) = [f for f in os.listdir(members[0] / 'eval') if f.endswith('.json')]
  with open(members[0] / 'eval' / report) as f:
    assert json.load(f)['members'] == 2
