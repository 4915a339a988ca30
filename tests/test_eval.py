"""eval.py: restoring a run, averaging checkpoints, scoring, user input, attention maps."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import sacrebleu
from etils import epath

from core.checkpoints import Checkpoints
from core.config import ConfigError
from core.parallel import make_mesh
from evaluation import EvalError
from evaluation.decode import decode_all, decode_texts, make_decode_fn
from evaluation.evaluate import attention_maps
from evaluation.mbr import lcs_length, mbr_select, pairwise_rouge, pairwise_sentence_bleu
from evaluation.metrics import (
  annotator_scores,
  moses_tok_lc,
  rouge,
  rouge_scores,
  translation_scores,
)
from evaluation.runs import load_ensemble, load_params, load_run, restore
from input_pipeline import datasets
from input_pipeline import tokenizer as tokenizer_lib
from training.steps import create_training
from training.trainer import train_and_evaluate

from helpers import ROOT, finish, tiny_run_config, two_processes


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('eval')
  workdir = str(tmp / 'run')
  train_and_evaluate(tiny_run_config(tmp, num_train_steps=30), workdir)  # ckpts 10, 20, 30
  return workdir


def run_eval(*args, stdin=None, env=None):
  return subprocess.run(
    [sys.executable, os.path.join(ROOT, 'eval.py'), *args],
    cwd=ROOT,
    env=env,
    input=stdin,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_averaging_the_last_checkpoints_is_their_mean(run):
  config, _ = load_run(run)
  _, averaged, _, used = load_params(config, run, average_last=2)
  assert used == [20, 30]
  _, p20, _, _ = load_params(config, run, step=20)
  _, p30, _, _ = load_params(config, run, step=30)
  for a, x, y in zip(*(jax.tree.leaves(t) for t in (averaged, p20, p30))):
    np.testing.assert_allclose(a, (np.asarray(x) + np.asarray(y)) / 2, rtol=1e-6)
  # eval.py reads just the parameters (a partial restore); training restores the whole state
  training_state = create_training(config, make_mesh()).state
  state, _ = Checkpoints(run, keep=10).restore_latest(
    jax.tree.map(ocp.utils.to_shape_dtype_struct, training_state)
  )
  assert int(state['step']) == 30
  for x, y in zip(jax.tree.leaves(state['params']), jax.tree.leaves(p30)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_ema_run_validates_resumes_and_decodes_with_its_moving_average(tmp_path, run):
  workdir = str(tmp_path / 'ema_run')
  config = tiny_run_config(tmp_path, num_train_steps=20, eval_every_steps=20, ema_decay=0.9)
  metrics = train_and_evaluate(config, workdir)
  assert metrics['eval_ema/nll'] != metrics['eval/nll']  # both weights validated
  # a rerun restores the state, moving average included, and has nothing left to do
  assert 'eval/nll' not in train_and_evaluate(config, workdir)
  config, _ = load_run(workdir)
  _, params, _, _ = load_params(config, workdir)
  _, ema, _, used = load_params(config, workdir, ema=True)
  assert used == [20]
  assert not np.allclose(jax.tree.leaves(ema)[0], jax.tree.leaves(params)[0])
  result = run_eval(f'--workdir={workdir}', '--split=eval', '--beam_size=1', '--ema')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'moving average of the parameters' in result.stdout
  assert os.path.exists(os.path.join(workdir, 'eval', 'eval.step20.ema.beam1.txt'))
  # a run without the average says so (eval.py prints EvalErrors as one line)
  with pytest.raises(EvalError, match=r'^--ema: .* kept no moving average \(its config'):
    load_params(load_run(run)[0], run, ema=True)


def test_a_config_json_of_another_layout_names_its_missing_fields(run, tmp_path):
  """A run is read as it was saved: a config.json that lacks fields the code reads stops in one
  line naming them, whatever configs/ holds; one with every field loads as written."""
  old = tmp_path / 'old_run'
  old.mkdir()
  fields = json.loads((epath.Path(run) / 'config.json').read_text())
  (old / 'tokenizer.model').write_bytes((epath.Path(run) / 'tokenizer.model').read_bytes())
  (old / 'config.json').write_text(json.dumps({**fields, 'emb_dim': 24, 'not_a_field': 1}))
  config, _ = load_run(str(old))
  assert config.emb_dim == 24 and config.not_a_field == 1  # as saved
  del fields['matmul_dtype'], fields['beam_size'], fields['mesh']
  (old / 'config.json').write_text(json.dumps(fields))
  with pytest.raises(
    ConfigError, match=r'lacks config.beam_size, config.matmul_dtype, config.mesh: it was written'
  ) as error:
    load_run(str(old))
  assert '\n' not in str(error.value)


def test_split_evaluation_writes_hypotheses_and_scores(run):
  result = run_eval(f'--workdir={run}', '--split=eval', '--beam_size=2')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'bleu' in result.stdout and 'nrefs:1|case:mixed' in result.stdout
  reports = [f for f in os.listdir(os.path.join(run, 'eval')) if f.endswith('.json')]
  report = json.load(open(os.path.join(run, 'eval', reports[0])))
  assert report['num_examples'] == 32 and report['beam_size'] == 2
  hyps = open(os.path.join(run, 'eval', reports[0].replace('.json', '.txt'))).read()
  assert hyps.count('\n') == 32


def test_evaluation_at_the_configs_decoding_names_the_expected_result(run, tmp_path):
  """What make train prints last: the config's expected_result, on the dataset and split it
  names and at the config's own decoding only."""
  workdir = tmp_path / 'run'
  shutil.copytree(run, workdir)
  config = json.loads((workdir / 'config.json').read_text())
  config['expected_result'] = 'files eval: bleu 1.00 (a hand-written line)'
  (workdir / 'config.json').write_text(json.dumps(config))
  result = run_eval(f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr[-2000:]
  expected = 'expected for this config: files eval: bleu 1.00 (a hand-written line)'
  assert result.stdout.splitlines()[-1] == expected
  result = run_eval(f'--workdir={workdir}', '--beam_size=2')
  assert result.returncode == 0 and 'expected for this config' not in result.stdout
  # a run of the config on other data (its dataset overridden): the line does not apply
  config['expected_result'] = 'multi30k val: bleu 1.00 (a hand-written line)'
  (workdir / 'config.json').write_text(json.dumps(config))
  result = run_eval(f'--workdir={workdir}')
  assert result.returncode == 0 and 'expected for this config' not in result.stdout


@pytest.fixture(scope='module')
def member(run, tmp_path_factory):
  """A second run for ensembles: the run's vocabulary, its checkpoints up to step 20."""
  workdir = tmp_path_factory.mktemp('member') / 'run'
  shutil.copytree(run, workdir, ignore=shutil.ignore_patterns('eval'))
  shutil.rmtree(workdir / 'checkpoints' / '30')
  return str(workdir)


def test_an_ensemble_decodes_with_each_members_own_checkpoints(run, member):
  result = run_eval(f'--workdir={run}', f'--ensemble={member}', '--split=eval', '--beam_size=2')
  assert result.returncode == 0, result.stderr[-2000:]
  assert f'ensemble with {member}' in result.stdout
  out = os.path.join(run, 'eval', 'eval.step30.ens2.beam2.alpha0.6')
  assert json.load(open(out + '.json'))['members'] == 2
  # the same decoding in-process, from the two runs' latest checkpoints: 30 and 20
  config, tok = load_run(run)
  graphdefs, params, rests, used = load_ensemble(config, tok, run, [member])
  assert used == [30] and len(params) == 2
  for leaf, expected in zip(
    jax.tree.leaves(params[1]), jax.tree.leaves(load_params(config, run, step=20)[1])
  ):
    np.testing.assert_array_equal(np.asarray(leaf), np.asarray(expected))
  examples, _ = datasets.load_examples(config, 'eval')
  decode_fn = make_decode_fn(graphdefs, rests, config, tok, beam_size=2, alpha=0.6)
  outputs = decode_all(tok.encode([e['source'] for e in examples]), decode_fn, params, config, 8)
  assert open(out + '.txt').read().split('\n')[:-1] == [tok.decode(o) for o in outputs]


def test_ensemble_members_must_share_vocabulary_and_data(run, tmp_path):
  config, tok = load_run(run)
  fields = json.loads((epath.Path(run) / 'config.json').read_text())
  other_vocab, other_lang = tmp_path / 'vocab', tmp_path / 'lang'
  for workdir, changes in ((other_vocab, {}), (other_lang, {'target_lang': 'fr'})):
    workdir.mkdir()
    (workdir / 'config.json').write_text(json.dumps({**fields, **changes}))
  shutil.copy(os.path.join(run, 'tokenizer.model'), other_lang / 'tokenizer.model')
  tokenizer_lib.train_tokenizer(
    ['m n o p q r', 's t u v w x'] * 60, str(other_vocab / 'tokenizer.model'), vocab_size=18
  )
  with pytest.raises(EvalError, match='has another vocabulary than'):
    load_ensemble(config, tok, run, [str(other_vocab)])
  with pytest.raises(EvalError, match=r"has config.target_lang='fr', .* 'de'; members"):
    load_ensemble(config, tok, run, [str(other_lang)])


def test_own_test_files_are_scored_like_a_split_of_the_same_pairs(run, tmp_path):
  """--eval_files scores a user's file of references: the same pairs as the run's eval split,
  written as parallel files, give the same hypotheses and scores as --split=eval."""
  config, _ = load_run(run)
  examples, _ = datasets.load_examples(config, 'eval')
  source, target = tmp_path / 'test.src', tmp_path / 'test.tgt'
  source.write_text(''.join(e['source'] + '\n' for e in examples))
  target.write_text(''.join(e['target'] + '\n' for e in examples))
  results = [
    run_eval(f'--workdir={run}', '--beam_size=2', *args)
    for args in (['--split=eval'], [f'--eval_files={source},{target}', '--file_format=parallel'])
  ]
  for result in results:
    assert result.returncode == 0, result.stderr[-2000:]
  split, own = (r.stdout.splitlines() for r in results)
  assert own[0].startswith('test.src: 32 examples, beam 2') and split[0].startswith('eval: 32')
  scores = lambda lines: [line for line in lines if line.startswith('  ')]
  assert scores(own) == scores(split) and len(scores(own)) == 2  # BLEU, chrF and signatures
  stem = os.path.join(run, 'eval', '{}.step30.beam2.alpha0.6.txt')
  assert open(stem.format('test.src')).read() == open(stem.format('eval')).read()


def test_a_newest_checkpoint_that_cannot_be_read_is_passed_over_and_left_in_place(run, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(run, workdir, ignore=shutil.ignore_patterns('eval'))
  for root, _, files in os.walk(workdir / 'checkpoints' / '30' / 'state'):
    for name in files:
      (epath.Path(root) / name).write_bytes(b'garbage')
  result = run_eval(f'--workdir={workdir}', '--split=eval', '--beam_size=1')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'warning: checkpoint step 30 cannot be read (' in result.stderr
  assert ', step 20;' in result.stdout.splitlines()[0]
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['10', '20', '30']  # nothing moved
  result = run_eval(f'--workdir={workdir}', '--step=30')
  assert result.returncode != 0
  assert (
    result.stderr.strip()
    .splitlines()[-1]
    .startswith('error: --step=30: its checkpoint cannot be read (')
  )


@pytest.mark.slow
def test_processes_and_split_parameters_decode_into_the_files_of_one_device(run, tmp_path):
  """eval.py as 2 processes on 127.0.0.1 (each decodes its rows of every batch, process 0
  writes), and on 8 simulated devices as a (data 2, fsdp 2, tensor 2) mesh, each device
  holding a share of the parameters: the hypotheses and scores of one process on one device.
  Where the run's mesh does not fit the devices, whole parameters on each; a --mesh that does
  not fit is an error."""
  runs = [tmp_path / 'one', tmp_path / 'two', tmp_path / 'eight']
  for copy in runs:
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns('eval'))
  args = ['--split=eval', '--beam_size=2', '--mbr=bleu']
  assert run_eval(f'--workdir={runs[0]}', *args).returncode == 0
  processes = two_processes([sys.executable, 'eval.py', f'--workdir={runs[1]}', *args])
  outputs = finish(processes)
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  said = [[line for line in out.splitlines() if 'examples' in line] for out, _ in outputs]
  assert said[0][0].startswith('eval: 32 examples') and not said[1]  # process 0 reports
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8')
  eight = run_eval(f'--workdir={runs[2]}', *args, '--mesh=data:2,fsdp:2,tensor:2', env=env)
  assert eight.returncode == 0, eight.stderr[-3000:]
  placement = next(line for line in eight.stdout.splitlines() if line.startswith('mesh '))
  held, whole = (float(x) for x in placement.split('parameters ')[1].split(' MB')[0].split(' of '))
  assert placement.startswith('mesh data 2 x fsdp 2 x tensor 2') and held < whole / 2
  stem = 'eval/eval.step30.beam2.alpha0.6.mbr-bleu.t0.15'
  reports = [json.loads((r / f'{stem}.json').read_text()) for r in runs]
  for r, report in zip(runs, reports):
    assert (r / f'{stem}.txt').read_text() == (runs[0] / f'{stem}.txt').read_text()
    del report['decode_seconds'], report['hypotheses']
    assert report == reports[0]
  # On one device the run's own mesh (saved in its config) falls back to whole parameters;
  # a --mesh that does not fit is an error.
  saved = json.loads((runs[0] / 'config.json').read_text())
  (runs[0] / 'config.json').write_text(json.dumps({**saved, 'mesh': 'data:2,fsdp:4'}))
  fallback = run_eval(f'--workdir={runs[0]}', '--input=-', stdin='a b c\n')
  assert fallback.returncode == 0 and "config.mesh='data:2,fsdp:4' does not fit" in fallback.stderr
  wrong = run_eval(f'--workdir={runs[0]}', *args, '--mesh=data:2,fsdp:4')
  assert wrong.returncode != 0 and wrong.stderr.strip().splitlines()[-1] == (
    "error: --mesh='data:2,fsdp:4' does not cover the 1 devices "
    "({'data': 2, 'fsdp': 4, 'tensor': 1}); make the sizes multiply to 1, or give one of them "
    'as -1.'
  )


def test_an_exported_run_decodes_as_the_run_it_came_from(run, tmp_path):
  """export.py writes the mean of the last checkpoints, parameters only, with the config and
  tokenizer; eval.py decodes it to the run's own hypotheses and scores."""
  exported = str(tmp_path / 'exported')
  command = [sys.executable, os.path.join(ROOT, 'export.py'), f'--workdir={run}']
  result = subprocess.run(
    [*command, f'--output={exported}', '--average_last=2'], cwd=ROOT, capture_output=True, text=True
  )
  assert result.returncode == 0 and '[20, 30]' in result.stdout, result.stderr[-2000:]
  assert sorted(os.listdir(exported)) == ['checkpoints', 'config.json', 'tokenizer.model']
  config, _ = load_run(exported)
  _, params, _, _ = load_params(config, exported)
  size = sum(
    f.stat().st_size for f in pathlib.Path(exported, 'checkpoints').rglob('*') if f.is_file()
  )
  assert size < 1.5 * sum(x.nbytes for x in jax.tree.leaves(params))  # no optimizer moments
  outputs = []
  for workdir, extra in ((run, ['--average_last=2']), (exported, [])):
    result = run_eval(f'--workdir={workdir}', '--split=eval', '--beam_size=2', *extra)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    path = next(line for line in lines if line.startswith('hypotheses: '))
    hypotheses = open(path.split('hypotheses: ')[1]).read()
    outputs.append(([line for line in lines if line.startswith('  ')], hypotheses))
  assert outputs[0] == outputs[1]
  again = subprocess.run(
    [*command, f'--output={exported}'], cwd=ROOT, capture_output=True, text=True
  )
  assert again.returncode == 1 and 'is not empty' in again.stderr


def test_user_lines_keep_empty_lines_and_warn_on_long_ones(run):
  long_line = ' '.join(['a b c d e f g h i j'] * 5)  # > max_eval_len=24 tokens
  result = run_eval(
    f'--workdir={run}', '--input=-', '--beam_size=1', stdin=f'a b c\n\n{long_line}\nj i h\n'
  )
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.split('\n')
  assert len(lines) == 5 and lines[1] == '' and lines[4] == ''  # 4 outputs + final newline
  assert 'line 3 has' in result.stderr and 'decoding its first 24' in result.stderr


def test_decoding_constraints_in_the_config_hold_in_the_outputs(run):
  config, tok = load_run(run)
  graphdef, params, rest, _ = load_params(config, run)
  sources = tok.encode(['a b c d', 'j i', 'e', 'c c c c c c'])
  starts = tok.word_starts()

  def outputs(**constraints):
    constrained = config.copy_and_resolve_references()
    constrained.update(constraints)
    decode_fn = make_decode_fn(graphdef, rest, constrained, tok, beam_size=2, alpha=0.6)
    outs = decode_all(sources, decode_fn, params, config, 8)
    return [[int(i) for i in ids[: list(ids).index(tokenizer_lib.EOS_ID)]] for ids in outs]

  def meets(ids):
    return starts[ids].sum() >= 3 and len(set(ids)) == len(ids)

  assert not all(meets(ids) for ids in outputs())  # the constraints bind
  for ids in outputs(min_decode_words=3, no_repeat_ngram_size=1):
    assert meets(ids) and len(tok.decode(ids).split()) >= 3


def test_attention_plot_is_written(run, tmp_path):
  path = tmp_path / 'attn.png'
  result = run_eval(f'--workdir={run}', '--plot_attention=a b c d', f'--output={path}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert path.stat().st_size > 1000 and path.read_bytes()[:4] == b'\x89PNG'


def test_attention_maps_are_distributions(run):
  config, tok = load_run(run)
  config.beam_size = 1
  src, out, enc, cross = attention_maps(restore(run, config, tok), 'a b c d')
  assert len(enc) == config.num_encoder_layers and enc[0].shape == (
    config.num_heads,
    len(src),
    len(src),
  )
  assert cross[0].shape == (config.num_heads, len(out), len(src))
  np.testing.assert_allclose(cross[0].sum(-1), 1.0, atol=1e-5)


def test_mbr_with_a_near_zero_temperature_keeps_the_beams_best(run):
  # Weights exp(score / T) with T -> 0 put all the mass on the top hypothesis, whose expected
  # utility is then its utility against itself: MBR must give back the beam's best.
  config, tok = load_run(run)
  graphdef, params, rest, _ = load_params(config, run)
  sources = tok.encode(['a b c d', 'j i', 'e', 'c c c c c c', 'f g h'])
  plain = decode_texts(sources, config, tok, graphdef, params, rest, 4, 0.6, 8)
  config.mbr_utility, config.mbr_temperature = 'chrf', 1e-9
  mbr = decode_texts(sources, config, tok, graphdef, params, rest, 4, 0.6, 8)
  assert mbr == plain


def test_split_evaluation_with_mbr_names_its_outputs(run):
  result = run_eval(
    f'--workdir={run}', '--split=eval', '--beam_size=3', '--mbr=bleu', '--mbr_temperature=0.5'
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'MBR bleu (temperature 0.5)' in result.stdout
  stem = os.path.join(run, 'eval', 'eval.step30.beam3.alpha0.6.mbr-bleu.t0.5')
  report = json.load(open(stem + '.json'))
  assert report['mbr_utility'] == 'bleu' and report['mbr_temperature'] == 0.5
  assert open(stem + '.txt').read().count('\n') == 32


def test_translation_scores_against_hand_computed_values():
  examples = [
    {'references': ['Ein Hund läuft.'], 'tok_reference': 'ein hund läuft .'},
    {'references': ['Zwei Männer reden.'], 'tok_reference': 'zwei männer reden .'},
  ]
  perfect = translation_scores(['Ein Hund läuft.', 'Zwei Männer reden.'], examples, 'de')
  assert perfect['bleu'] == pytest.approx(100) and perfect['tok_lc_bleu'] == pytest.approx(100)
  # Lowercasing and tokenisation make a case/spacing-only difference vanish in tok-lc BLEU.
  cased = translation_scores(['ein hund läuft .', 'zwei männer reden .'], examples, 'de')
  assert cased['tok_lc_bleu'] == pytest.approx(100) and cased['bleu'] < 60


@pytest.mark.parametrize('split', ['test_2016_flickr', 'test_2017_flickr', 'test_2017_mscoco'])
def test_tokenizing_raw_references_reproduces_the_shipped_tokenized_ones(split):
  """Hypotheses go through moses_tok_lc; on the raw German references it must give Multi30k's
  own tok/ files (entities such as &quot; included), so tok-lc BLEU compares like with like."""
  raw = datasets.read_lines(f'{datasets.RAW_DIR}/multi30k/{split}.de')
  tokenized = datasets.read_lines(f'{datasets.RAW_DIR}/multi30k/tok/{split}.lc.norm.tok.de')
  assert [line.strip() for line in moses_tok_lc(raw, 'de')] == tokenized


def test_rouge_takes_the_best_reference_and_reports_mean_and_target_only():
  examples = [
    {
      'target': 'meeting tomorrow',
      'references': ['meeting tomorrow', 'budget review for the quarter'],
    }
  ]
  scores = rouge_scores(['quarterly budget review'], examples)
  # vs reference 2 (stemmed): tokens {quarterli, budget, review} vs {budget, review, for, the,
  # quarter}: 2 overlaps, P = 2/3, R = 2/5, F = 0.5. Reference 1 shares nothing: F = 0.
  assert scores['rouge1'] == pytest.approx(50.0)
  assert scores['rouge1_mean'] == pytest.approx(25.0)
  assert scores['rouge1_target'] == pytest.approx(0.0)


def test_rouge_is_the_mean_over_examples():
  hypotheses = ['budget meeting', 'lunch', 'the budget meeting today', 'plans']
  references = [['budget meeting'], ['dinner'], ['budget meeting'], ['plans']]
  # ROUGE-1 F1 per example: 1, 0, 2 * 2 / (4 + 2) = 2/3 ('the' and 'today' count), 1.
  scores = rouge(hypotheses, references)
  assert scores['rouge1'] == pytest.approx(100 * (1 + 0 + 2 / 3 + 1) / 4)
  assert rouge(hypotheses, references) == scores  # no resampling: the same every call


def test_annotator_scores_by_hand():
  examples = [
    {'target': 'budget meeting', 'references': ['budget meeting', 'budget meeting', 'lunch plans']}
  ]
  scores = annotator_scores(examples)
  # Annotator 1 ('budget meeting'): 100 against the target, best over the others 100, mean of
  # 100 and 0 = 50. Annotator 2 ('lunch plans') shares nothing: 0, 0, 0. Averaged: 50, 50, 25.
  assert scores['rouge1_target'] == pytest.approx(50.0)
  assert scores['rouge2'] == pytest.approx(50.0)
  assert scores['rougeLsum_mean'] == pytest.approx(25.0)
  with pytest.raises(EvalError, match='same number'):
    annotator_scores([{'target': 'a', 'references': ['a']}])


MBR_TEXTS = [
  'Ein Mann fährt Fahrrad.',
  'Ein Mann fährt ein Fahrrad.',
  'Ein Mann fährt Rad.',
  'Zwei Hunde spielen im Schnee.',
  '',
  'Ein Mann, ein Mann fährt.',
]


def test_pairwise_sentence_bleu_equals_sacrebleus_sentence_score():
  metric = sacrebleu.metrics.BLEU(effective_order=True)
  expected = [[metric.sentence_score(h, [r]).score for r in MBR_TEXTS] for h in MBR_TEXTS]
  np.testing.assert_allclose(pairwise_sentence_bleu(MBR_TEXTS), expected, atol=1e-9)


SUBJECTS = [
  'Meeting moved to Friday',
  'meetings moved to friday!',
  'Friday meeting',
  'Budget review for Q3',
  '',
  'meeting meeting friday moved',
  'the the the',
]


def rouge_mean_f1(hypothesis, reference):
  """rouge-score's own scorer: the mean of ROUGE-1/2/L F1 x 100."""
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top

  scorer = rouge_scorer.RougeScorer(['rouge1', 'rouge2', 'rougeL'], use_stemmer=True)
  return 100 * np.mean([s.fmeasure for s in scorer.score(reference, hypothesis).values()])


def test_lcs_length_by_hand():
  assert lcs_length('abcbdab', 'bdcaba') == 4  # CLRS's example: "bcba"
  assert lcs_length('', 'abc') == 0
  assert lcs_length(['x', 'y'], ['y', 'x']) == 1


def test_pairwise_rouge_equals_rouge_scores_scorer():
  expected = [[rouge_mean_f1(h, r) for r in SUBJECTS] for h in SUBJECTS]
  np.testing.assert_allclose(pairwise_rouge(SUBJECTS), expected, atol=1e-9)
  # 'Friday meeting' vs 'Meeting moved to Friday' (stemmed, lowercased): ROUGE-1 2 of 2 and
  # 2 of 4 tokens, F = 2/3; no shared bigram; LCS 1 ('meet' or 'friday'), F = 1/3.
  assert pairwise_rouge(SUBJECTS)[2, 0] == pytest.approx(100 * (2 / 3 + 1 / 3) / 3)


@pytest.mark.parametrize('utility', ['bleu', 'chrf', 'rouge'])
@pytest.mark.parametrize('temperature', [0.0, 0.1, 1.0])
def test_mbr_picks_the_highest_expected_utility(utility, temperature):
  bleu, chrf = sacrebleu.metrics.BLEU(effective_order=True), sacrebleu.metrics.CHRF()
  utility_fn = {
    'bleu': lambda h, r: bleu.sentence_score(h, [r]).score,
    'chrf': lambda h, r: chrf.sentence_score(h, [r]).score,
    'rouge': rouge_mean_f1,
  }[utility]
  scores = np.array([-0.9, -0.5, -0.7, -0.1, -2.0, -0.8])  # the outlier scores best
  weights = np.ones(6) if temperature == 0 else np.exp(scores / temperature)
  weights /= weights.sum()
  expected = [sum(w * utility_fn(h, r) for w, r in zip(weights, MBR_TEXTS)) for h in MBR_TEXTS]
  chosen = mbr_select(MBR_TEXTS, scores, utility, temperature)
  assert chosen == MBR_TEXTS[int(np.argmax(expected))]
  # At 0.1 the top score's weight is 55 times the next (e^4): it wins; flatter weights let the
  # three near-paraphrases' consensus win instead.
  if temperature == 0.1:
    assert chosen == 'Zwei Hunde spielen im Schnee.'
  else:
    assert chosen.startswith('Ein Mann fährt')
