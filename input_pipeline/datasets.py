"""Text examples from one place: the project's tfds builders, the tfds catalog, or users' files.

Every source yields plain dicts {'source': str, 'target': str, 'references': [str, ...]} where
`references` are the target plus any extra human references (AESLC annotations), and
'tok_reference' holds the dataset's own tokenized lowercased reference where it ships one.
"""

import collections
import contextlib
import fcntl
import json
import os
import re
import socket

import numpy as np
import tensorflow_datasets as tfds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAW_DIR = os.path.join(REPO, 'data')
MULTI30K_LANGS = ('en', 'de', 'fr')
MULTI30K_SPLITS = {
  'train': 29000,
  'val': 1014,
  'test_2016_flickr': 1000,
  'test_2017_flickr': 1000,
  'test_2017_mscoco': 461,
}
AESLC_SPLITS = {'train': 14436, 'validation': 1960, 'test': 1906}
FILE_FORMATS = ('parallel', 'tsv', 'jsonl')


class DataError(ValueError):
  """Missing or malformed data; the message names the file/line/field and the fix."""


# ----------------------------------------------------------------------------- raw readers


def read_lines(path: str, skip_empty: bool = False):
  """UTF-8 lines of `path` without newlines; invalid UTF-8 raises naming file and line."""
  if not os.path.isfile(path):
    raise DataError(f'data file not found: {path}')
  lines = []
  with open(path, 'rb') as f:
    for number, raw in enumerate(f, 1):
      try:
        line = raw.decode('utf-8').rstrip('\r\n')
      except UnicodeDecodeError as e:
        raise DataError(
          f'{path}:{number}: invalid UTF-8 ({e.reason}); re-encode the file as UTF-8.'
        ) from None
      lines.append(line)
  return lines


def read_parallel(source_path: str, target_path: str):
  """Aligned lines of two files -> (pairs, number of pairs skipped for an empty side)."""
  sources, targets = read_lines(source_path), read_lines(target_path)
  if len(sources) != len(targets):
    raise DataError(
      f'parallel files differ in length: {source_path} has {len(sources)} lines, '
      f'{target_path} has {len(targets)}.'
    )
  pairs = [(s, t) for s, t in zip(sources, targets) if s.strip() and t.strip()]
  return pairs, len(sources) - len(pairs)


def read_tsv(path: str):
  pairs, skipped = [], 0
  for number, line in enumerate(read_lines(path), 1):
    if not line.strip():
      skipped += 1
      continue
    fields = line.split('\t')
    if len(fields) != 2:
      raise DataError(
        f'{path}:{number}: expected source<TAB>target, found '
        f'{"no tab" if len(fields) < 2 else f"{len(fields)} tab-separated fields"}; '
        f'one tab per line (texts with tabs: file_format=jsonl).'
      )
    if not fields[0].strip() or not fields[1].strip():
      skipped += 1
      continue
    pairs.append((fields[0], fields[1]))
  return pairs, skipped


def read_jsonl(path: str, source_key: str, target_key: str, extra_keys=()):
  """JSON lines -> list of dicts with the chosen fields; a missing field names file and line."""
  records, skipped = [], 0
  for number, line in enumerate(read_lines(path), 1):
    if not line.strip():
      skipped += 1
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f'{path}:{number}: not valid JSON ({e.msg}).') from None
    if not isinstance(record, dict):
      raise DataError(
        f'{path}:{number}: expected a JSON object with the fields {source_key!r} '
        f'and {target_key!r}, found {type(record).__name__}.'
      )
    for key in (source_key, target_key):
      if key not in record:
        raise DataError(
          f'{path}:{number}: field {key!r} is missing (fields: {sorted(record)}); '
          f'set config.source_key / config.target_key.'
        )
      if not isinstance(record[key], str):
        raise DataError(
          f'{path}:{number}: field {key!r} is {json.dumps(record[key])[:40]}, not '
          f'a string; give every example its text (or drop the line).'
        )
    records.append(record)
  return records, skipped


# ----------------------------------------------------------------------------- tfds builders


class Multi30k(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Multi30k (WMT16/17 multimodal task 1, text only) in English, German and French.

  One record per aligned sentence with all three languages, so every direction is a choice of
  keys; val/test carry the dataset's tokenized lowercased references as '<lang>_tok'.
  """

  VERSION = tfds.core.Version('1.1.0')  # 1.1.0: 'index' feature (file order)

  def _info(self):
    text = {lang: tfds.features.Text() for lang in MULTI30K_LANGS}
    text.update({f'{lang}_tok': tfds.features.Text() for lang in MULTI30K_LANGS})
    text['index'] = tfds.features.Scalar(np.int64)  # line number: tfds shuffles on write
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(text),
      homepage='https://github.com/multi30k/dataset',
      citation='Elliott et al. 2016, Multi30K: Multilingual English-German Image Descriptions.',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the corpus is vendored in data/multi30k
    return {split: self._generate_examples(split) for split in MULTI30K_SPLITS}

  def _generate_examples(self, split):
    root = os.path.join(RAW_DIR, 'multi30k')
    columns = {lang: read_lines(os.path.join(root, f'{split}.{lang}')) for lang in MULTI30K_LANGS}
    for lang in MULTI30K_LANGS:
      tok = os.path.join(root, 'tok', f'{split}.lc.norm.tok.{lang}')
      columns[f'{lang}_tok'] = read_lines(tok) if os.path.exists(tok) else [''] * len(columns[lang])
    for i in range(len(columns['en'])):
      yield i, {'index': i, **{key: lines[i] for key, lines in columns.items()}}


class Aeslc(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """AESLC (email body -> subject line) with the catalog builder's feature names, plus the
  three human annotations of validation/test as extra references."""

  VERSION = tfds.core.Version('1.1.0')  # 1.1.0: 'index' feature (file order)

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          'index': tfds.features.Scalar(np.int64),
          'email_body': tfds.features.Text(),
          'subject_line': tfds.features.Text(),
          'annotations': tfds.features.Sequence(tfds.features.Text()),
        }
      ),
      homepage='https://github.com/ryanzhumich/AESLC',
      citation='Zhang and Tetreault 2019, This Email Could Save Your Life (ACL).',
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in AESLC_SPLITS}

  def _generate_examples(self, split):
    path = os.path.join(RAW_DIR, 'aeslc', f'{split}.jsonl')
    records, _ = read_jsonl(path, 'email_body', 'subject_line')
    for i, record in enumerate(records):
      yield (
        record['id'],
        {
          'index': i,
          'email_body': record['email_body'],
          'subject_line': record['subject_line'],
          'annotations': record.get('annotations', []),
        },
      )


tfds.disable_progress_bar()
BUILDERS = {'multi30k': Multi30k, 'aeslc': Aeslc}


def _text(value):
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def project_data_dir(config) -> str:
  return config.data_dir or os.path.join(REPO, 'data', 'tfds')


@contextlib.contextmanager
def _exclusive(path: str):
  """Holds an exclusive lock on the local file `path`: other processes and threads wait."""
  with open(path, 'a') as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)


def prepared_builder(name: str, data_dir: str):
  """The project's builder for `name`, preparing it (array_record, seconds) on first use.

  Preparation in a local data_dir holds a lock file there, so concurrent first uses (test
  workers, a parallel sweep on a fresh clone) prepare once instead of racing for the same
  directory; a bucket data_dir has no file locks and is prepared unguarded."""
  builder = BUILDERS[name](data_dir=data_dir, file_format='array_record')
  if builder.is_prepared():
    return builder
  if '://' in data_dir:
    builder.download_and_prepare()
    return builder
  os.makedirs(data_dir, exist_ok=True)
  with _exclusive(os.path.join(data_dir, f'{name}.lock')):
    builder = BUILDERS[name](data_dir=data_dir, file_format='array_record')  # may be ready now
    if not builder.is_prepared():
      builder.download_and_prepare()
  return builder


def _records_in_file_order(name, config, split):
  source = prepared_builder(name, project_data_dir(config)).as_data_source(split=split)
  return sorted((source[i] for i in range(len(source))), key=lambda r: int(r['index']))


# ----------------------------------------------------------------------------- catalog


def _catalog_source(config, split):
  """tfds catalog dataset by name; if it is not prepared, fail at once with what to run."""
  data_dir = config.data_dir or None
  try:
    builder = tfds.builder(config.dataset, data_dir=data_dir, file_format='array_record')
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(
      f'config.dataset={config.dataset!r} is neither a shipped dataset '
      f'({sorted(BUILDERS)}), "files", nor a tfds catalog name.'
    ) from None
  if not builder.is_prepared():
    raise DataError(
      f'tfds dataset {config.dataset!r} is not prepared in {builder.data_dir_root}. On a machine '
      f'with network access run: python -m tensorflow_datasets.scripts.download_and_prepare '
      f'--datasets={config.dataset} --data_dir=<dir> '
      f'--file_format=array_record, then set --config.data_dir=<dir>.'
    )
  if split not in builder.info.splits:
    raise DataError(
      f'split {split!r} is not in {config.dataset}; splits: {sorted(builder.info.splits)}.'
    )
  return builder.as_data_source(split=split)


def no_network() -> bool:
  """True when the tfds/GCS hosts cannot be resolved (offline machine)."""
  try:
    socket.setdefaulttimeout(2)
    socket.gethostbyname('storage.googleapis.com')
    return False
  except OSError:
    return True
  finally:
    socket.setdefaulttimeout(None)


# ----------------------------------------------------------------------------- entry point


def model_text(config, text: str) -> str:
  """A text as the model sees it: lowercased under config.lowercase (the Multi30k papers'
  lowercased-data protocol, for tokenized lowercased BLEU; cased metrics then score the lowercase
  output against the cased references), else unchanged."""
  return text.lower() if config.get('lowercase', False) else text


def splits_of(config):
  """Split names available for the configured dataset (for error messages and eval.py)."""
  if config.dataset == 'multi30k':
    return list(MULTI30K_SPLITS)
  if config.dataset == 'aeslc':
    return list(AESLC_SPLITS)
  if config.dataset == 'files':  # eval_files answers to 'eval' and to the config's eval_split
    return ['train', 'eval'] + (
      [config.eval_split] if config.eval_split not in ('train', 'eval') else []
    )
  return None


def load_examples(config, split: str):
  """All examples of `split` as dicts; returns (examples, number of empty pairs skipped)."""
  known = splits_of(config)
  if known is not None and split not in known:
    raise DataError(f'unknown split {split!r} for dataset {config.dataset!r}; splits: {known}.')
  blank_lines = 0  # lines of users' files that hold no example at all
  if config.dataset == 'files':
    examples, blank_lines = _file_examples(config, split)
  elif config.dataset == 'multi30k':
    src, tgt = config.source_lang, config.target_lang
    if src not in MULTI30K_LANGS or tgt not in MULTI30K_LANGS or src == tgt:
      raise DataError(
        f'multi30k direction {src}->{tgt} is not available; source_lang and '
        f'target_lang must be two different of {MULTI30K_LANGS}.'
      )
    records = _records_in_file_order('multi30k', config, split)
    examples = [
      {
        'source': _text(r[src]),
        'target': _text(r[tgt]),
        'references': [_text(r[tgt])],
        'tok_reference': _text(r[f'{tgt}_tok']),
      }
      for r in records
    ]
  elif config.dataset == 'aeslc':
    examples = []
    for r in _records_in_file_order('aeslc', config, split):
      target = _text(r['subject_line'])
      extra = [_text(a) for a in r['annotations']]
      examples.append(
        {'source': _text(r['email_body']), 'target': target, 'references': [target] + extra}
      )
  else:
    source = _catalog_source(config, split)
    src_key, tgt_key = config.source_key, config.target_key
    if not src_key or not tgt_key:
      raise DataError(
        f'set config.source_key and config.target_key for tfds dataset '
        f'{config.dataset!r} (e.g. "en" and "de", or "article" and "highlights").'
      )
    examples = []
    for i in range(len(source)):
      record = source[i]
      for key in (src_key, tgt_key):
        if key not in record:
          raise DataError(f'{config.dataset} has no field {key!r}; fields: {sorted(record)}.')
      examples.append(
        {
          'source': _text(record[src_key]),
          'target': _text(record[tgt_key]),
          'references': [_text(record[tgt_key])],
        }
      )
  kept = [e for e in examples if e['source'].strip() and e['target'].strip()]
  for e in kept:  # what the model reads and writes; 'references' stay as written, for scoring
    e['source'], e['target'] = model_text(config, e['source']), model_text(config, e['target'])
  if not kept:
    where = f'{config.train_files if split == "train" else config.eval_files}: ' * (
      config.dataset == 'files'
    )
    raise DataError(f'{where}split {split!r} of {config.dataset!r} has no non-empty examples.')
  return kept, len(examples) - len(kept) + blank_lines


def _file_examples(config, split):
  """config.train_files (split 'train') or config.eval_files (any other split the dataset has:
  'eval' and config.eval_split): 'src_path,tgt_path' (parallel) or one path. Returns (examples,
  blank lines skipped); pairs with one empty side are returned, for load_examples to count."""
  spec = config.train_files if split == 'train' else config.eval_files
  if not spec:
    raise DataError(
      f'config.{"train" if split == "train" else "eval"}_files is empty; give the '
      f'path(s) of your {split} data (see data/README.md).'
    )
  if config.file_format not in FILE_FORMATS:
    raise DataError(
      f'config.file_format={config.file_format!r} is unknown; use one of {FILE_FORMATS}.'
    )
  if config.file_format == 'parallel':
    paths = spec.split(',')
    if len(paths) != 2:
      raise DataError(
        f'parallel files are given as "source_path,target_path", got {spec!r}; one file of '
        f'pairs is file_format tsv or jsonl (eval.py: --file_format).'
      )
    pairs, skipped = read_parallel(*paths)
  elif config.file_format == 'tsv':
    pairs, skipped = read_tsv(spec)
  else:
    src_key, tgt_key = config.source_key or 'source', config.target_key or 'target'
    records, skipped = read_jsonl(spec, src_key, tgt_key)
    pairs = [(r[src_key], r[tgt_key]) for r in records]
  return [{'source': s, 'target': t, 'references': [t]} for s, t in pairs], skipped


# ----------------------------------------------------------------------------- gap sentences

GAP_MASK = '<mask>'  # stands for the removed sentence; no real AESLC body contains it


def _unigram_f1(words, other_words) -> float:
  """ROUGE-1 F1 between two word lists (clipped unigram counts)."""
  overlap = sum((collections.Counter(words) & collections.Counter(other_words)).values())
  if not overlap:
    return 0.0
  precision, recall = overlap / len(words), overlap / len(other_words)
  return 2 * precision * recall / (precision + recall)


def gap_sentence_examples(examples, min_words: int = 3, max_words: int = 16):
  """PEGASUS's gap-sentence generation (Zhang et al. 2020, the 'Ind-Orig' choice) as extra
  training pairs: in each source of at least two sentences (lines: AESLC bodies hold one per
  line), the sentence of `min_words` to `max_words` words with the highest ROUGE-1 F1 against
  the rest of the source is replaced by GAP_MASK, and the pair asks for it back. Sources
  without such a sentence give none. Returns [{'source', 'target'}]."""
  pairs = []
  for example in examples:
    lines = [line.strip() for line in example['source'].split('\n')]
    lines = [line for line in lines if line]
    words = [re.findall(r'\w+', line.lower()) for line in lines]
    best, best_score = None, 0.0
    for i, line_words in enumerate(words):
      if not min_words <= len(line_words) <= max_words:
        continue
      rest = [w for j, other in enumerate(words) if j != i for w in other]
      score = _unigram_f1(line_words, rest) if rest else 0.0
      if score > best_score:
        best, best_score = i, score
    if best is not None:
      source = '\n'.join(GAP_MASK if i == best else line for i, line in enumerate(lines))
      pairs.append({'source': source, 'target': lines[best]})
  return pairs
