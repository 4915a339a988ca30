"""Transformer-tiny on Multi30k En->De: the default experiment (Wu et al. 2021's shape).

  make train        # train.py --config=configs/default.py --workdir=runs/default; eval.py
  make train-ensemble                 # two runs at once, one core each, decoded as one model
  .venv/bin/python eval.py --workdir=runs/default --split=test_2016_flickr

4+4 layers, width 128, 4 heads, SwiGLU MLP 256, rotary positions, QKNorm (g0 = 10); 2,613,772
parameters; joint SentencePiece unigram vocabulary of 8000; 11000 steps of 32 packed rows x 64
tokens, AdamW (weight decay 0.3), peak learning rate 3e-3, cosine decay, dropout 0.2, label
smoothing 0.1, bfloat16 matmul operands where the CPU has them; at most 60 min of wall time.
Decoding (chosen on val): MBR over beam 20, alpha 1.5, T 0.15, the mean of the last 10 checkpoints.

On a 2-core AMD EPYC Zen 5 (no GPU), seeds 0-2: 34.5-35.5 min of training; val 43.14-43.32,
test_2016_flickr 40.78 tokenized lowercased BLEU (mean). make train-ensemble, three pairs:
58 min of training, test_2016_flickr 42.10. Published (Transformer-tiny, text only): 41.02.
Tables, other test sets and the ablations that chose each field: docs/results.md, ablations.md.

Variants: `--config=configs/default.py:base` (Vaswani et al.'s base: 6+6, 512, 8 heads, MLP
2048, ReLU, sinusoidal positions) or `:big`, `:small`; any field: `--config.num_heads=8`.
"""

import ml_collections

# name: (emb_dim, num_heads, encoder layers, decoder layers, mlp_dim)
MODEL_SIZES = {
  'tiny': (128, 4, 4, 4, 256),  # Wu et al. 2021's Transformer-tiny for Multi30k
  'small': (256, 4, 6, 6, 1024),
  'base': (512, 8, 6, 6, 2048),  # Vaswani et al. 2017, Table 3 "base" (~65M params)
  'big': (1024, 16, 6, 6, 4096),  # Vaswani et al. 2017, Table 3 "big"
}


def get_config(size: str = 'tiny'):
  """Returns the config; `size` picks one of MODEL_SIZES."""
  if size not in MODEL_SIZES:
    raise ValueError(f'unknown model size {size!r}; use one of {sorted(MODEL_SIZES)}.')
  config = ml_collections.ConfigDict()

  # ---- data
  config.task = 'translation'  # translation (BLEU, chrF) | summarization (ROUGE)
  config.dataset = 'multi30k'  # shipped: multi30k, aeslc; tfds catalog names; or 'files'
  config.source_lang = 'en'  # multi30k direction (any of en, de, fr)
  config.target_lang = 'de'
  config.source_key = ''  # tfds catalog / jsonl field names ('' = dataset default)
  config.target_key = ''
  config.train_files = ''  # 'files' dataset: see data/README.md for the formats
  config.eval_files = ''
  config.file_format = 'parallel'  # parallel (one file per language) | tsv | jsonl
  config.train_split = 'train'
  config.eval_split = 'val'
  config.data_dir = ''  # tfds data dir; '' = <repo>/data/tfds
  config.lowercase = False  # train and decode lowercased text (Multi30k papers' data)
  config.vocab_size = 8000  # SentencePiece vocabulary (joint source+target)
  config.vocab_model_type = 'unigram'  # unigram | bpe
  config.vocab_max_chars = 10_000_000  # characters of training text used to fit the vocabulary
  # > 0: each epoch re-tokenizes the training pairs with sampled segmentations: unigram subword
  # regularization (Kudo 2018; smoothing alpha) or BPE-dropout (probability); docs/design.md
  config.subword_sampling_alpha = 0.0
  config.subword_sampling_nbest = -1  # unigram: sample among the n best segmentations; -1: all
  config.gap_sentences = False  # also train on PEGASUS gap-sentence pairs of the sources
  config.max_len = 128  # positions the model supports (source and target)
  config.max_train_len = 64  # longer training pairs are dropped (and counted)
  config.max_target_len = 0  # training targets' own row length; 0: max_train_len
  config.truncate_inputs = False  # instead cut training sources to max_train_len (summaries)
  config.max_eval_len = 128  # eval sources are truncated to this (with a warning)
  config.batching = 'packed'  # packed (rows of several examples) | bucketed (token budget)
  config.batch_size = 32  # rows of max_train_len tokens per global batch (packed)
  config.grad_accum_steps = 1  # k > 1: k batches (micro-batches) per update, one in memory
  # devices as a ('data', 'fsdp', 'tensor') mesh; -1: the devices left (docs/design.md)
  config.mesh = 'data:-1,fsdp:1,tensor:1'
  # logical parameter axis -> mesh axis: FSDP over the model width, Megatron-style tensor
  # parallelism over attention heads, the MLP's inner width and the vocabulary
  config.sharding_rules = 'embed:fsdp,heads:tensor,mlp:tensor,vocab:tensor'
  config.pack_window = 1  # packed: rows filled first-fit from this many examples; 1: next-fit
  config.max_tokens = 4096  # bucketed: target tokens per global batch
  config.eval_batch_size = 64  # sentences per evaluation/decoding batch

  # ---- model
  # transformer | rnn (bidirectional recurrent encoder, attentional decoder: model/rnn.py,
  # configs/rnn_attention.py); the rnn reads emb_dim, the layer counts, dropout_rate,
  # source_word_dropout, the embedding and dtype fields, and the rnn_* fields below
  config.architecture = 'transformer'
  emb_dim, num_heads, enc_layers, dec_layers, mlp_dim = MODEL_SIZES[size]
  config.emb_dim = emb_dim  # model width d_model
  config.num_heads = num_heads  # attention heads; must divide emb_dim
  config.num_encoder_layers = enc_layers
  config.num_decoder_layers = dec_layers
  config.mlp_dim = mlp_dim  # inner width of the position-wise MLP
  # MLP: relu | gelu | silu | geglu | swiglu (gated: one more d x mlp_dim matrix, Shazeer 2020).
  # SwiGLU for tiny (chosen on Multi30k val, docs/ablations.md); the paper's ReLU
  # for the larger shapes, where it was not compared.
  config.activation = 'swiglu' if size == 'tiny' else 'relu'
  config.dropout_rate = 0.2  # residual, embedding and MLP dropout
  config.attention_dropout_rate = 0.0  # dropout on attention weights
  config.source_word_dropout = 0.0  # drop whole source token embeddings (Sennrich & Zhang: 0.1)
  config.layer_norm = 'pre'  # pre (stable default) | post (the paper)
  # Positions: sinusoidal | learned (added to the embeddings) | rope (rotary, in self-attention;
  # Su et al. 2021). Rope for tiny (chosen on Multi30k val, docs/ablations.md); the
  # paper's sinusoidal for the larger shapes, where it was not compared.
  config.position_embedding = 'rope' if size == 'tiny' else 'sinusoidal'
  # > 0: QKNorm (Henry et al. 2020): scores g cos(q, k), g learned from this initial value
  # (their log2(L^2 - L), L the 97.5th-percentile length: 9.5-9.8 on Multi30k); 0: off.
  # 10 for tiny (chosen on Multi30k val, docs/ablations.md); off for the larger
  # shapes, where it was not compared.
  config.qk_norm = 10.0 if size == 'tiny' else 0.0
  config.share_embeddings = True  # one embedding table for source and target
  config.tie_output_embedding = True  # target embedding doubles as the output projection
  config.rnn_cell = 'gru'  # rnn: gru | lstm
  config.rnn_hidden_dim = 256  # rnn: decoder state and annotation width (encoder: half each way)
  config.rnn_attention = 'additive'  # rnn: additive (Bahdanau) | dot | general (Luong)
  config.copy_attention = False  # pointer-generator: also copy source tokens (summaries)
  # einsum (own path) | jax (jax.nn.dot_product_attention: cuDNN on GPUs where the inputs qualify)
  config.attention_kernel = 'einsum'
  config.dtype = 'float32'  # activations: float32 | bfloat16
  config.param_dtype = 'float32'
  # matmul operands: bfloat16 (float32 sums) | float32 (exact) | auto: bfloat16 where the
  # machine has it natively (AVX512-BF16 or AMX CPUs, GPUs, TPUs), else float32
  config.matmul_dtype = 'auto'
  # what each layer recomputes in the backward pass instead of storing: none | full (all; keeps
  # its inputs) | dots (keeps the weight matmuls' outputs); less memory for more compute
  config.remat = 'none'

  # ---- training
  config.seed = 0
  config.num_train_steps = 11000  # 35 min on a 2-core AMD EPYC Zen 5
  # stop at num_train_steps or at this much wall time, the schedule following whichever comes
  # first (docs/design.md); 0: no budget
  config.time_budget_minutes = 60.0 if size == 'tiny' else 0.0
  config.optimizer = 'adamw'  # adamw | adam (docs/ablations.md)
  config.learning_rate = 3e-3  # peak learning rate
  config.schedule = 'cosine'  # cosine (to 0 at the end) | rsqrt (the paper's) | constant
  config.warmup_steps = 1500
  config.adam_b1 = 0.9
  config.adam_b2 = 0.98
  config.adam_eps = 1e-9
  config.weight_decay = 0.3  # adamw only: decoupled decay of kernels and embeddings
  config.grad_clip_norm = 1.0  # 0 disables
  config.label_smoothing = 0.1
  # > 0 (e.g. 0.999): also keep an exponential moving average of the parameters, checkpointed
  # and validated beside them (eval_ema/); eval.py --ema decodes with it
  config.ema_decay = 0.0
  # > 0: R-Drop (Liang et al. 2021): each row runs twice (two dropout masks, ~2.3x the step
  # time) and the loss adds alpha/4 x the two passes' symmetric KL (paper: 5 for IWSLT)
  config.rdrop_alpha = 0.0
  config.loss_chunk_size = 512  # fused chunked loss over this many tokens; 0: plain logits

  # ---- checkpoints, logging, evaluation during training
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 10  # eval.py --average_last=K averages the last K
  config.log_every_steps = 50
  config.eval_every_steps = 1000
  config.num_eval_bleu_batches = 4  # greedy-decoded validation batches for the BLEU in logs
  # 'a:b': a jax.profiler trace of the steps from step a to step b in <workdir>/plugins/profile
  # (TensorBoard's profile plugin, or Perfetto); '': none
  config.profile_steps = ''

  # ---- decoding (eval.py flags override); the decoding chosen on Multi30k val (docs/results.md)
  config.beam_size = 20  # beam width; 1 = greedy
  config.length_penalty = 1.5  # GNMT alpha
  config.average_last = 10  # decode with the mean of the last K checkpoints' parameters
  config.max_decode_len_a = 1.2  # max output length = a * source length + b
  config.max_decode_len_b = 10
  config.min_decode_len = 0  # at least this many tokens before EOS (summaries)
  config.min_decode_words = 0  # at least this many words (word-initial subwords)
  config.no_repeat_ngram_size = 0  # n > 0: never emit an n-gram (of subwords) twice
  config.beam_groups = 0  # concurrent sub-batch beam searches (same outputs); 0: auto
  # '' (the beam's best) | bleu | chrf | rouge: minimum Bayes risk choice among the beam's
  # n-best (Kumar and Byrne 2004)
  config.mbr_utility = 'bleu'
  config.mbr_temperature = 0.15  # MBR weights exp(score / T); 0: equal weights
  # '<dataset> <split>: <scores> (<how>)': what eval.py prints there at this decoding, as
  # docs/results.md reports it; make train ends with it
  expected = 'multi30k val: tok_lc_bleu 43.14-43.32 (seeds 0-2 of make train, 2-core AMD EPYC'
  config.expected_result = f'{expected} Zen 5; docs/results.md)' if size == 'tiny' else ''
  return config
