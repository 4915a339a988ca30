"""CNN/DailyMail summarization through tensorflow-datasets, for users with a network and GPUs/TPUs.

Prepare once on a machine with network access (about 1 GB download):
  python -m tensorflow_datasets.scripts.download_and_prepare --datasets=cnn_dailymail \
      --data_dir=$TFDS_DIR --file_format=array_record
Then:
  python train.py --config=configs/cnn_dailymail.py --workdir=gs://bucket/runs/cnndm \
      --config.data_dir=$TFDS_DIR
  python eval.py --workdir=gs://bucket/runs/cnndm --split=test

Expected settings: the paper's base shape (6+6 layers, 512 wide, 8 heads), 32k SentencePiece
vocabulary, articles cut to 512 tokens and summaries to 128, token-budget batches of ~64k
tokens (global), ~100k steps; beam 4, alpha 0.6 (or 0.8 for longer summaries). This is a
recipe, not a measured result: on this project's 2-core CPU it is impractical, and it has not
been run here.
"""

from configs import default


def get_config():
  config = default.get_config('base')
  config.task = 'summarization'
  config.dataset = 'cnn_dailymail'
  config.source_key = 'article'
  config.target_key = 'highlights'
  config.train_split = 'train'
  config.eval_split = 'validation'
  config.vocab_size = 32000
  config.vocab_max_chars = 200_000_000
  config.max_len = 640
  config.max_train_len = 512
  config.max_eval_len = 512
  config.truncate_inputs = True
  config.batching = 'bucketed'
  config.max_tokens = 65536
  config.eval_batch_size = 32
  config.learning_rate = 1e-3
  config.weight_decay = 0.1  # AdamW; the default's 0.3 was chosen on Multi30k only
  config.schedule = 'rsqrt'
  config.warmup_steps = 8000
  config.num_train_steps = 100_000
  config.checkpoint_every_steps = 2000
  config.eval_every_steps = 5000
  config.max_decode_len_a = 0.0
  config.max_decode_len_b = 128
  config.beam_size = 4  # the paper's decoding, not chosen on data here
  config.length_penalty = 0.6
  config.average_last = 1
  config.mbr_utility = ''
  return config
