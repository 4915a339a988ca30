"""SentencePiece tokenizer trained in-process on the training split (joint source+target)."""

import os
import re
import tempfile

import numpy as np
import sentencepiece as spm
from etils import epath

from input_pipeline.datasets import DataError
from model.special_tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID  # noqa: F401 (re-exported)

MODEL_TYPES = ('unigram', 'bpe')
FILENAME = 'tokenizer.model'


class Tokenizer:
  """Text <-> ids. Encoded sequences end with EOS; decoding stops at the first EOS."""

  def __init__(self, model_path: str, model_proto: bytes = None):
    """The tokenizer saved at `model_path`, or the not yet saved `model_proto` for it."""
    if model_proto is None:
      if not epath.Path(model_path).exists():
        raise FileNotFoundError(f'tokenizer model not found: {model_path}')
      model_proto = epath.Path(model_path).read_bytes()
    self.path, self.model_proto = model_path, model_proto
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

  def save(self):
    """Write the model to its path unless it is there: write-then-rename, so never a
    half-written tokenizer (local or GCS workdir)."""
    target = epath.Path(self.path)
    if not target.exists():
      partial = target.parent / (target.name + '.partial')
      partial.write_bytes(self.model_proto)
      partial.replace(target)

  @property
  def vocab_size(self) -> int:
    return self.sp.get_piece_size()

  def encode(self, texts):
    """list of str -> list of int lists, each ending with EOS."""
    return [ids + [EOS_ID] for ids in self.sp.encode(list(texts))]

  def sample_encode(self, texts, alpha: float, nbest_size: int = -1):
    """Like `encode`, but each text gets a segmentation sampled by SentencePiece: subword
    regularization (Kudo 2018) for a unigram model (from the `nbest_size` best segmentations,
    -1: all, with probabilities sharpened by `alpha`), BPE-dropout (Provilkov et al. 2020) with
    merge-dropout probability `alpha` for a BPE model.

    Not reproducible: SentencePiece (0.2.3) samples from abseil's generator, which mixes
    per-process entropy into any seed. train.py saves each epoch's samples in the workdir.
    """
    return [
      ids + [EOS_ID]
      for ids in self.sp.encode(
        list(texts), enable_sampling=True, alpha=alpha, nbest_size=nbest_size
      )
    ]

  def decode(self, ids) -> str:
    ids = [int(i) for i in ids]
    if EOS_ID in ids:
      ids = ids[: ids.index(EOS_ID)]
    return self.sp.decode([i for i in ids if i not in (PAD_ID, BOS_ID)])

  def word_starts(self) -> np.ndarray:
    """[vocab_size] bool: the pieces that begin a word (SentencePiece's '\u2581' marker), the
    words that min_decode_words counts; False for the control ids."""
    return np.array(
      [
        self.sp.id_to_piece(i).startswith('\u2581') and not self.sp.is_control(i)
        for i in range(self.vocab_size)
      ]
    )

  def vocabulary(self):
    """[(piece, score)] by id: two tokenizers with equal vocabularies segment text alike (the
    model file also records where it was trained, so its bytes differ between runs)."""
    return [(self.sp.id_to_piece(i), self.sp.get_score(i)) for i in range(self.vocab_size)]

  def pieces(self, ids):
    """Subword strings of ids (for attention-map labels)."""
    return [self.sp.id_to_piece(int(i)) for i in ids]


def train_tokenizer(
  texts,
  model_path: str,
  vocab_size: int,
  model_type: str = 'unigram',
  max_chars: int = 10_000_000,
  seed: int = 0,
  save: bool = True,
) -> Tokenizer:
  """Fit SentencePiece on `texts` (a deterministic sample of at most `max_chars` characters);
  saved at `model_path` unless `save` is False."""
  if model_type not in MODEL_TYPES:
    raise ValueError(
      f'config.vocab_model_type={model_type!r} is unknown; use one of {MODEL_TYPES}.'
    )
  texts = [t for t in texts if t.strip()]
  order = np.random.default_rng(seed).permutation(len(texts))
  sample, chars = [], 0
  for i in order:
    if chars + len(texts[i]) > max_chars:
      break
    sample.append(texts[i])
    chars += len(texts[i])
  with tempfile.TemporaryDirectory() as tmp:
    prefix = os.path.join(tmp, 'spm')
    try:
      spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sample),
        model_prefix=prefix,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        bos_id=BOS_ID,
        unk_id=UNK_ID,
        # all of `sample`; SentencePiece refuses sizes 1-100, where 0 (all) means the same
        input_sentence_size=len(sample) if len(sample) > 100 else 0,
        shuffle_input_sentence=False,
        num_threads=os.cpu_count() or 1,
        minloglevel=2,
        max_sentence_length=1 << 16,
      )
    except RuntimeError as e:
      largest = re.search(r'value <= (\d+)', str(e))
      if largest:
        raise DataError(
          f'config.vocab_size={vocab_size} is more pieces than the training text allows '
          f'({len(sample)} texts): at most {largest.group(1)}; set --config.vocab_size='
          f'{largest.group(1)} or lower.'
        ) from None
      raise DataError(
        f'SentencePiece could not train a vocabulary of config.vocab_size={vocab_size} on '
        f'{len(sample)} texts ({str(e).splitlines()[0][:200]}); lower config.vocab_size.'
      ) from None
    tok = Tokenizer(model_path, epath.Path(prefix + '.model').read_bytes())
  if save:
    tok.save()
  return tok


def load_or_train(config, workdir: str, train_examples) -> Tokenizer:
  """The run's tokenizer: reused from the workdir if present, else trained for it and not yet
  saved (`Tokenizer.save`, once the training data is known to fit)."""
  path = os.path.join(workdir, FILENAME)
  if epath.Path(path).exists():
    return Tokenizer(path)
  texts = [e['source'] for e in train_examples] + [e['target'] for e in train_examples]
  return train_tokenizer(
    texts,
    path,
    config.vocab_size,
    config.vocab_model_type,
    config.vocab_max_chars,
    config.seed,
    save=False,
  )
