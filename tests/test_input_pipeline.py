"""The input pipeline: datasets, tokenizer, batching, resumable iteration and bad input."""

import json
import threading
import time
from concurrent import futures

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from rouge_score import rouge_scorer

from configs import default
from input_pipeline import batching, datasets
from input_pipeline import tokenizer as tokenizer_lib
from model.common import shift_right
from model.transformer import EncoderDecoder, TransformerConfig


@pytest.fixture(scope='module')
def multi30k_config():
  return default.get_config()


@pytest.fixture(scope='module')
def multi30k_train(multi30k_config):
  return datasets.load_examples(multi30k_config, 'train')[0]


@pytest.fixture(scope='module')
def small_tokenizer(multi30k_train, tmp_path_factory):
  texts = [e['source'] for e in multi30k_train[:3000]] + [
    e['target'] for e in multi30k_train[:3000]
  ]
  path = tmp_path_factory.mktemp('tok') / 'tokenizer.model'
  return tokenizer_lib.train_tokenizer(texts, str(path), vocab_size=1000)


# ----------------------------------------------------------------------------- datasets


def test_multi30k_split_counts_and_alignment(multi30k_config):
  for split, count in datasets.MULTI30K_SPLITS.items():
    examples, skipped = datasets.load_examples(multi30k_config, split)
    assert (len(examples), skipped) == (count, 0), split
  # File order is kept: example i is line i of the raw files.
  val, _ = datasets.load_examples(multi30k_config, 'val')
  raw_en = datasets.read_lines(f'{datasets.RAW_DIR}/multi30k/val.en')
  raw_de = datasets.read_lines(f'{datasets.RAW_DIR}/multi30k/val.de')
  tok_de = datasets.read_lines(f'{datasets.RAW_DIR}/multi30k/tok/val.lc.norm.tok.de')
  assert [e['source'] for e in val] == raw_en
  assert [e['target'] for e in val] == raw_de
  assert [e['tok_reference'] for e in val] == tok_de


def test_concurrent_first_uses_prepare_a_dataset_once(tmp_path):
  # Test workers or a parallel sweep on a fresh clone all find the dataset unprepared; without
  # the lock the later one failed renaming its finished copy onto the first one's directory.
  start = threading.Barrier(2)

  def first_use(_):
    start.wait()
    source = datasets.prepared_builder('multi30k', str(tmp_path)).as_data_source(split='val')
    return sorted(datasets._text(source[i]['en']) for i in range(len(source)))

  with futures.ThreadPoolExecutor(2) as pool:
    first, second = pool.map(first_use, range(2))
  assert first == second == sorted(datasets.read_lines(f'{datasets.RAW_DIR}/multi30k/val.en'))
  assert [p.name for p in (tmp_path / 'multi30k').iterdir() if p.is_dir()] == ['1.1.0']


def test_lowercase_changes_what_the_model_reads_but_not_the_references():
  config = default.get_config()
  config.lowercase = True
  val, _ = datasets.load_examples(config, 'val')
  raw_en = datasets.read_lines(f'{datasets.RAW_DIR}/multi30k/val.en')
  raw_de = datasets.read_lines(f'{datasets.RAW_DIR}/multi30k/val.de')
  assert [e['source'] for e in val] == [line.lower() for line in raw_en]
  assert [e['target'] for e in val] == [line.lower() for line in raw_de]
  assert [e['references'] for e in val] == [[line] for line in raw_de]  # scored as written
  assert any(e['target'] != e['references'][0] for e in val)


def test_multi30k_any_direction(multi30k_config):
  config = default.get_config()
  config.source_lang, config.target_lang = 'fr', 'de'
  fr_de, _ = datasets.load_examples(config, 'test_2017_mscoco')
  assert (
    fr_de[0]['source'] == datasets.read_lines(f'{datasets.RAW_DIR}/multi30k/test_2017_mscoco.fr')[0]
  )
  config.target_lang = 'fr'
  with pytest.raises(datasets.DataError, match='direction fr->fr'):
    datasets.load_examples(config, 'val')


def test_aeslc_counts_and_annotations():
  config = default.get_config()
  config.dataset = 'aeslc'
  for split, count in datasets.AESLC_SPLITS.items():
    examples, _ = datasets.load_examples(config, split)
    assert len(examples) == count
  first = json.loads(open(f'{datasets.RAW_DIR}/aeslc/test.jsonl').readline())
  assert examples[0]['source'] == first['email_body']
  assert examples[0]['references'] == [first['subject_line']] + first['annotations']


def test_gap_sentences_mask_the_line_most_like_the_rest_of_the_body():
  body = (
    'hello team\nthe gas contract for march is attached\n'
    'please review the march gas contract\nthanks john, the contract is fine'
  )
  # Each long line's words shared with the rest of the body, by hand: 5 (the, gas, contract,
  # march, is), 4 and 3. Over one body ROUGE-1 F1 is 2 x shared / all words, so 5 wins; the
  # 2-word greeting is too short to be chosen. A one-line body and one whose other lines are
  # too short give no pair.
  examples = [
    {'source': body, 'target': 'march contract'},
    {'source': 'one line only here', 'target': 'x'},
    {'source': 'hi\nok then', 'target': 'y'},
  ]
  assert datasets.gap_sentence_examples(examples) == [
    {
      'source': 'hello team\n<mask>\nplease review the march gas contract\n'
      'thanks john, the contract is fine',
      'target': 'the gas contract for march is attached',
    }
  ]
  line, rest = 'The gas contract, for March!', 'please review the March gas contract today'
  expected = rouge_scorer.RougeScorer(['rouge1']).score(rest, line)['rouge1'].fmeasure
  assert datasets._unigram_f1(
    ['the', 'gas', 'contract', 'for', 'march'], rest.lower().split()
  ) == pytest.approx(expected)


def test_unknown_split_lists_the_splits(multi30k_config):
  with pytest.raises(datasets.DataError, match="splits: \\['train', 'val'"):
    datasets.load_examples(multi30k_config, 'test')


def test_catalog_dataset_offline_fails_fast_with_the_command(tmp_path):
  config = default.get_config()
  config.update(
    dataset='wmt14_translate/de-en', source_key='en', target_key='de', data_dir=str(tmp_path)
  )
  start = time.time()
  with pytest.raises(datasets.DataError, match='download_and_prepare --datasets=wmt14_translate'):
    datasets.load_examples(config, 'train')
  assert time.time() - start < 60  # not tfds's minutes of retries


def test_unknown_dataset_name_is_one_clear_error(tmp_path):
  config = default.get_config()
  config.update(dataset='no_such_corpus', data_dir=str(tmp_path))
  with pytest.raises(datasets.DataError, match="config.dataset='no_such_corpus'"):
    datasets.load_examples(config, 'train')


# ----------------------------------------------------------------------------- users' files


def files_config(spec, fmt, **overrides):
  config = default.get_config()
  config.update(dataset='files', train_files=spec, file_format=fmt, **overrides)
  return config


def test_parallel_tsv_and_jsonl_files_give_the_same_pairs(tmp_path):
  pairs = [('hello world', 'hallo welt'), ('good day', 'guten tag')]
  (tmp_path / 's.txt').write_text('hello world\n\ngood day\n')
  (tmp_path / 't.txt').write_text('hallo welt\n\nguten tag\n')
  (tmp_path / 'd.tsv').write_text('hello world\thallo welt\ngood day\tguten tag\n')
  (tmp_path / 'd.jsonl').write_text('\n'.join(json.dumps({'en': s, 'de': t}) for s, t in pairs))
  parallel, skipped = datasets.load_examples(
    files_config(f'{tmp_path}/s.txt,{tmp_path}/t.txt', 'parallel'), 'train'
  )
  assert skipped == 1  # the empty line pair is skipped and counted
  tsv, _ = datasets.load_examples(files_config(f'{tmp_path}/d.tsv', 'tsv'), 'train')
  jsonl, _ = datasets.load_examples(
    files_config(f'{tmp_path}/d.jsonl', 'jsonl', source_key='en', target_key='de'), 'train'
  )
  for examples in (parallel, tsv, jsonl):
    assert [(e['source'], e['target']) for e in examples] == pairs


def test_files_with_the_default_config_read_eval_files_for_its_eval_split(tmp_path):
  """The own-data recipe as documented: --config.dataset=files with the default config, whose
  eval_split is 'val', validates on eval_files; 'eval' names the same file."""
  (tmp_path / 'train.tsv').write_text('a house\tein Haus\n')
  (tmp_path / 'dev.tsv').write_text('a car\tein Auto\n')
  config = default.get_config()
  config.update(
    dataset='files',
    file_format='tsv',
    train_files=str(tmp_path / 'train.tsv'),
    eval_files=str(tmp_path / 'dev.tsv'),
  )
  for split in (config.eval_split, 'eval'):
    examples, _ = datasets.load_examples(config, split)
    assert [e['target'] for e in examples] == ['ein Auto']
  assert datasets.load_examples(config, 'train')[0][0]['target'] == 'ein Haus'
  with pytest.raises(datasets.DataError, match="unknown split 'test'"):
    datasets.load_examples(config, 'test')


def test_lowercase_applies_to_users_files_as_to_the_shipped_datasets(tmp_path):
  """config.lowercase: the model reads and writes lowercased text; references stay cased."""
  (tmp_path / 'd.tsv').write_text('A House\tEin Haus\n')
  config = files_config(f'{tmp_path}/d.tsv', 'tsv', lowercase=True)
  [example], _ = datasets.load_examples(config, 'train')
  assert (example['source'], example['target']) == ('a house', 'ein haus')
  assert example['references'] == ['Ein Haus']


def test_parallel_files_of_different_length_name_both_files_and_counts(tmp_path):
  (tmp_path / 'a.en').write_text('one\ntwo\nthree\n')
  (tmp_path / 'a.de').write_text('eins\nzwei\n')
  with pytest.raises(datasets.DataError, match=r'a\.en has 3 lines, .*a\.de has 2'):
    datasets.load_examples(files_config(f'{tmp_path}/a.en,{tmp_path}/a.de', 'parallel'), 'train')


def test_invalid_utf8_names_file_and_line(tmp_path):
  (tmp_path / 'bad.tsv').write_bytes(b'ok\tgut\nbad \xff\tschlecht\n')
  with pytest.raises(datasets.DataError, match=r'bad\.tsv:2: invalid UTF-8'):
    datasets.load_examples(files_config(f'{tmp_path}/bad.tsv', 'tsv'), 'train')


def test_missing_file_missing_field_and_empty_split(tmp_path):
  with pytest.raises(datasets.DataError, match='not found'):
    datasets.load_examples(files_config(f'{tmp_path}/nope.tsv', 'tsv'), 'train')
  (tmp_path / 'd.jsonl').write_text('{"src": "a", "tgt": "b"}\n{"src": "c"}\n')
  with pytest.raises(datasets.DataError, match=r"d\.jsonl:2: field 'tgt' is missing"):
    datasets.load_examples(
      files_config(f'{tmp_path}/d.jsonl', 'jsonl', source_key='src', target_key='tgt'), 'train'
    )
  for line, message in (
    ('"just text"', 'expected a JSON object .* found str'),
    ('{"src": "c", "tgt": null}', "field 'tgt' is null, not a string"),
    ('{"src": ["c"], "tgt": "d"}', 'field \'src\' is \\["c"\\], not a string'),
  ):
    (tmp_path / 'd.jsonl').write_text('{"src": "a", "tgt": "b"}\n' + line + '\n')
    with pytest.raises(datasets.DataError, match=r'd\.jsonl:2: ' + message):
      datasets.load_examples(
        files_config(f'{tmp_path}/d.jsonl', 'jsonl', source_key='src', target_key='tgt'), 'train'
      )
  (tmp_path / 'three.tsv').write_text('a\tb\nc\td\te\n')
  with pytest.raises(
    datasets.DataError,
    match=r'three\.tsv:2: expected source<TAB>target, found '
    r'3 tab-separated fields',
  ):
    datasets.load_examples(files_config(f'{tmp_path}/three.tsv', 'tsv'), 'train')
  (tmp_path / 'empty.tsv').write_text('\n\n')
  with pytest.raises(datasets.DataError, match='no non-empty examples'):
    datasets.load_examples(files_config(f'{tmp_path}/empty.tsv', 'tsv'), 'train')


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trips_real_sentences(small_tokenizer, multi30k_config):
  val, _ = datasets.load_examples(multi30k_config, 'val')
  texts = [' '.join(e[side].split()) for e in val[:200] for side in ('source', 'target')]
  ids = small_tokenizer.encode(texts)
  assert all(seq[-1] == tokenizer_lib.EOS_ID for seq in ids)
  assert all(tokenizer_lib.PAD_ID not in seq[:-1] for seq in ids)
  assert [small_tokenizer.decode(seq) for seq in ids] == texts
  sp = small_tokenizer.sp
  assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)


def test_word_starts_count_the_whitespace_words(small_tokenizer, multi30k_config):
  val, _ = datasets.load_examples(multi30k_config, 'val')
  texts = [' '.join(e[side].split()) for e in val[:200] for side in ('source', 'target')]
  starts = small_tokenizer.word_starts()
  assert starts.shape == (small_tokenizer.vocab_size,)
  assert not starts[[tokenizer_lib.PAD_ID, tokenizer_lib.EOS_ID, tokenizer_lib.BOS_ID]].any()
  for text, ids in zip(texts, small_tokenizer.encode(texts)):
    assert starts[ids].sum() == len(text.split())


def test_tokenizer_is_reused_from_the_workdir(tmp_path, multi30k_train):
  config = default.get_config()
  config.vocab_size = 500
  first = tokenizer_lib.load_or_train(config, str(tmp_path), multi30k_train[:2000])
  assert not (tmp_path / tokenizer_lib.FILENAME).exists()  # saved once the data fits
  first.save()
  mtime = (tmp_path / tokenizer_lib.FILENAME).stat().st_mtime_ns
  second = tokenizer_lib.load_or_train(config, str(tmp_path), multi30k_train[:10])
  assert (tmp_path / tokenizer_lib.FILENAME).stat().st_mtime_ns == mtime
  assert first.encode(['a dog']) == second.encode(['a dog'])


@pytest.mark.parametrize('model_type,alpha', [('unigram', 0.3), ('bpe', 0.1)])
def test_sampled_segmentations_spell_the_same_text(
  multi30k_train, multi30k_config, tmp_path, model_type, alpha
):
  texts = [e[side] for e in multi30k_train[:3000] for side in ('source', 'target')]
  tok = tokenizer_lib.train_tokenizer(
    texts, str(tmp_path / 'tok.model'), vocab_size=1000, model_type=model_type
  )
  val, _ = datasets.load_examples(multi30k_config, 'val')
  texts = [' '.join(e[side].split()) for e in val[:200] for side in ('source', 'target')]
  sampled = tok.sample_encode(texts, alpha=alpha)
  assert sampled != tok.sample_encode(texts, alpha=alpha)  # a new draw each call
  assert [tok.decode(seq) for seq in sampled] == texts
  assert all(
    seq[-1] == tokenizer_lib.EOS_ID and tokenizer_lib.EOS_ID not in seq[:-1] for seq in sampled
  )
  best = tok.encode(texts)
  changed = sum(a != b for a, b in zip(sampled, best))
  assert 0.1 * len(texts) < changed < len(texts)
  assert sum(map(len, sampled)) > sum(map(len, best))  # the best segmentation is the shortest


# ----------------------------------------------------------------------------- batching


@pytest.fixture(scope='module')
def encoded(small_tokenizer, multi30k_train):
  examples = multi30k_train[:600]
  return (
    small_tokenizer.encode([e['source'] for e in examples]),
    small_tokenizer.encode([e['target'] for e in examples]),
  )


def unpack(batch):
  """Recover (source, target) token lists of every example of a batch from segment ids."""
  pairs = []
  for r in range(batch['inputs'].shape[0]):
    for seg in range(1, batch['inputs_segmentation'][r].max() + 1):
      sides = []
      for side in ('inputs', 'targets'):
        where = batch[f'{side}_segmentation'][r] == seg
        assert (batch[f'{side}_position'][r][where] == np.arange(where.sum())).all()
        sides.append(tuple(batch[side][r][where]))
      pairs.append(tuple(sides))
  return pairs


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def drawn_examples(it):
  """The example numbers `it` has drawn so far: its epochs' permutations up to its position."""
  epochs = [it._permutation(e) for e in range(it.state['epoch'])]
  return [
    int(e)
    for e in np.concatenate(epochs + [it._permutation(it.state['epoch'])[: it.state['index']]])
  ]


@pytest.mark.parametrize('window', [1, 64])
def test_packed_batches_hold_exactly_the_drawn_examples_in_whole_segments(encoded, window):
  """Every drawn example is in a batch (once per draw, intact) or still waits in the window."""
  it = batching.TrainIterator(
    *encoded, batching='packed', batch_size=8, max_len=48, pack_window=window
  )
  seen = []
  while it.state['epoch'] < 2:  # 600 examples, ~3 per row: crosses two epoch boundaries
    seen.extend(unpack(next(it)))
  waiting = it.state['pending'][0]
  assert len(waiting) <= window

  def pair(e):
    return tuple(it.sources[e]), tuple(it.targets[e])

  assert sorted(seen + [pair(e) for e in waiting]) == sorted(map(pair, drawn_examples(it)))


def test_pack_window_1_is_next_fit_in_epoch_order(encoded):
  """Window 1: examples in draw order; a row closes at the first example that does not fit."""
  it = batching.TrainIterator(*encoded, batching='packed', batch_size=8, max_len=48, pack_window=1)
  rows = [row for _ in range(20) for row in it._packed_rows()]
  order = [e for row in rows for e in row]
  assert order == drawn_examples(it)[: len(order)]
  for row, following in zip(rows, rows[1:]):
    used = it.lengths[row].sum(0)
    assert (used + it.lengths[following[0]] > 48).any()


def test_a_wider_pack_window_pads_less(encoded):
  def padding(window):
    it = batching.TrainIterator(
      *encoded, batching='packed', batch_size=8, max_len=48, pack_window=window
    )
    take(it, 40)
    return it.padding_fraction

  assert padding(64) < padding(1) - 0.04
  with pytest.raises(ValueError, match='pack_window=0 must be at least 1'):
    batching.TrainIterator(*encoded, pack_window=0)


def test_bucketed_batches_respect_the_token_budget(encoded):
  sources, targets = encoded
  it = batching.TrainIterator(sources, targets, batching='bucketed', max_tokens=512, max_len=48)
  for batch in take(it, 30):
    rows, length = batch['targets'].shape
    assert rows * length <= 512
    assert (batch['inputs_segmentation'] <= 1).all()
    lengths = np.maximum((batch['inputs'] != 0).sum(1), (batch['targets'] != 0).sum(1))
    assert lengths.max() <= length


@pytest.mark.parametrize('mode', batching.BATCHINGS)
def test_separate_target_length_keeps_pairs_whole_and_rows_short(encoded, mode):
  """max_target_len: target rows get their own (shorter) length; every pair still intact."""
  sources, targets = encoded
  limit = int(np.percentile([len(t) for t in targets], 80))
  it = batching.TrainIterator(
    sources, targets, batching=mode, batch_size=8, max_len=48, max_tokens=512, max_target_len=limit
  )
  assert it.dropped == sum(len(s) > 48 or len(t) > limit for s, t in zip(sources, targets))
  seen = []
  while it.state['epoch'] == 0:
    batch = next(it)
    assert batch['targets'].shape[1] <= max(batching.bucket_lengths(limit))
    if mode == 'packed':
      assert batch['inputs'].shape[1] == 48 and batch['targets'].shape[1] == limit
    else:  # bucketed by source length alone; target width fits the longest target
      assert batch['inputs'].shape[0] * batch['inputs'].shape[1] <= 512
      assert (batch['targets'] != 0).sum(1).max() <= batch['targets'].shape[1]
    seen.extend(unpack(batch))
  expected = sorted((tuple(s), tuple(t)) for s, t in zip(it.sources, it.targets))
  if mode == 'packed':  # what is not batched yet waits in the packing window
    waiting = [(tuple(it.sources[e]), tuple(it.targets[e])) for e in it.state['pending'][0]]
    drawn = [(tuple(it.sources[e]), tuple(it.targets[e])) for e in drawn_examples(it)]
    assert sorted(seen + waiting) == sorted(drawn)
  else:  # buckets still hold some epoch-0 examples when epoch 1 starts
    assert set(seen) <= set(expected) and len(set(seen)) > 0.8 * len(expected)
  assert 0 < it.padding_fraction < 1


def test_long_examples_are_dropped_and_counted(encoded):
  sources, targets = encoded
  limit = 12
  expected = sum(len(s) > limit or len(t) > limit for s, t in zip(sources, targets))
  it = batching.TrainIterator(sources, targets, batch_size=4, max_len=limit)
  assert it.dropped == expected > 0
  assert all(len(s) <= limit for s in it.sources)


@pytest.mark.parametrize('mode', batching.BATCHINGS)
def test_same_seed_same_order_other_seed_other_order(encoded, mode):
  def first_batches(seed):
    it = batching.TrainIterator(
      *encoded, batching=mode, batch_size=8, max_len=48, seed=seed, max_tokens=512
    )
    return np.concatenate([b['targets'].ravel() for b in take(it, 3)])

  np.testing.assert_array_equal(first_batches(0), first_batches(0))
  assert not np.array_equal(first_batches(0), first_batches(1))


@pytest.fixture(scope='module')
def resample_600(small_tokenizer, multi30k_train):
  """resample(epoch) for the `encoded` examples: one unigram draw per epoch, kept."""
  texts = [[e[side] for e in multi30k_train[:600]] for side in ('source', 'target')]
  drawn = {}  # an epoch's draw is kept, as train.py keeps it in the workdir

  def resample(epoch):
    if epoch not in drawn:
      drawn[epoch] = tuple(small_tokenizer.sample_encode(t, 0.2) for t in texts)
    return drawn[epoch]

  return resample


@pytest.mark.parametrize('resampled', [False, True])
@pytest.mark.parametrize('mode', batching.BATCHINGS)
def test_resuming_from_saved_state_continues_the_exact_sequence(
  encoded, resample_600, mode, resampled
):
  """Also when every epoch re-tokenizes (subword sampling): the tokens change at the boundary."""
  kwargs = dict(
    batching=mode,
    batch_size=16,
    max_len=48,
    max_tokens=1024,
    seed=3,
    resample=resample_600 if resampled else None,
  )
  it = batching.TrainIterator(*encoded, **kwargs)
  take(it, 7)
  state = json.loads(json.dumps(it.get_state()))  # survives a JSON checkpoint
  expected = take(it, 40)  # crosses an epoch boundary (600 examples)
  assert it.state['epoch'] >= 1
  resumed = batching.TrainIterator(*encoded, **kwargs)
  resumed.set_state(state)
  for a, b in zip(expected, take(resumed, 40)):
    for key in batching.KEYS:
      np.testing.assert_array_equal(a[key], b[key])


def test_processes_read_disjoint_shares_of_the_global_batch(encoded):
  full = next(batching.TrainIterator(*encoded, batch_size=8, max_len=48))
  shares = [
    next(
      batching.TrainIterator(*encoded, batch_size=8, max_len=48, process_index=p, process_count=2)
    )
    for p in range(2)
  ]
  np.testing.assert_array_equal(np.concatenate([s['inputs'] for s in shares]), full['inputs'])
  with pytest.raises(ValueError, match='divisible by 6'):
    batching.TrainIterator(*encoded, batch_size=8, process_count=2, row_multiple=3)


def test_eval_batches_cover_every_example_once_in_order(encoded):
  sources, targets = encoded
  n = 101
  batches = list(batching.eval_batches(sources[:n], 16, 24, targets[:n]))
  indices = np.concatenate([b['index'] for b in batches])
  assert list(indices[indices >= 0]) == list(range(n))
  assert (batches[-1]['weights'] == (batches[-1]['index'] >= 0)).all()
  for b in batches:
    assert b['inputs'].shape[0] == 16 and b['inputs'].shape[1] <= 24
    for row, i in enumerate(b['index']):
      if i >= 0:
        expected = batching.truncate(sources[i], 24)
        np.testing.assert_array_equal(b['inputs'][row, : len(expected)], expected)
  assert batching.truncate(np.arange(1, 40), 24)[-1] == 39  # EOS kept when cut


def test_packed_pipeline_examples_do_not_see_each_other(encoded):
  config = default.get_config()
  config.update(
    vocab_size=1000,
    emb_dim=32,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=1,
    mlp_dim=64,
    max_len=48,
  )
  model = EncoderDecoder(TransformerConfig.from_config(config), rngs=nnx.Rngs(0))
  batch = next(batching.TrainIterator(*encoded, batch_size=2, max_len=48))
  row = {k: jnp.asarray(v[:1]) for k, v in batch.items()}
  logits = model(
    row['inputs'],
    shift_right(row['targets'], row['targets_position']),
    inputs_positions=row['inputs_position'],
    targets_positions=row['targets_position'],
    inputs_segmentation=row['inputs_segmentation'],
    targets_segmentation=row['targets_segmentation'],
  )
  assert row['inputs_segmentation'].max() >= 2
  # Each packed example alone, one per row, right-padded (padding changes nothing; tested).
  segments = range(1, int(row['inputs_segmentation'].max()) + 1)
  wheres = [np.asarray(row['targets_segmentation'][0] == seg) for seg in segments]
  sources, targets = np.zeros((2, len(segments), 48), np.int32)
  for i, (seg, where) in enumerate(zip(segments, wheres)):
    src = np.asarray(row['inputs'][0])[np.asarray(row['inputs_segmentation'][0]) == seg]
    sources[i, : len(src)] = src
    targets[i, : where.sum()] = np.asarray(row['targets'][0])[where]
  alone = nnx.jit(lambda m, s, t: m(s, shift_right(t)))(model, sources, targets)
  for i, where in enumerate(wheres):
    np.testing.assert_allclose(logits[0][where], alone[i, : where.sum()], atol=1e-4)


def test_each_epoch_reads_its_sample_unless_it_breaks_the_length_limit(
  encoded, resample_600, small_tokenizer
):
  limit = 24
  it = batching.TrainIterator(
    *encoded, batching='packed', batch_size=8, max_len=limit, resample=resample_600
  )
  kept = [i for i, (s, t) in enumerate(zip(*encoded)) if len(s) <= limit and len(t) <= limit]
  seen_by_epoch = []
  for epoch in range(2):
    pairs = set()
    while it.state['epoch'] == epoch:  # the batches that start in this epoch
      pairs.update(unpack(next(it)))
    sample = resample_600(epoch)
    too_long = 0
    for k, i in enumerate(kept):
      fits = len(sample[0][i]) <= limit and len(sample[1][i]) <= limit
      too_long += not fits
      source, target = (sample[0][i], sample[1][i]) if fits else (encoded[0][i], encoded[1][i])
      assert list(it.sources[k]) == source and list(it.targets[k]) == target
    assert too_long > 0  # the fallback was exercised
    seen_by_epoch.append(pairs)
  assert len(seen_by_epoch[0] - seen_by_epoch[1]) > 100  # other segmentations
  texts = {small_tokenizer.decode(list(s)) for s, _ in seen_by_epoch[1]}
  assert texts <= {small_tokenizer.decode(s) for s in encoded[0]}
