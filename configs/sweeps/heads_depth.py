"""Heads x depth at fixed width on Multi30k En->De (Vaswani et al. 2017, Table 3 rows (A)/(C)).

  python sweep.py --config=configs/default.py --sweep=configs/sweeps/heads_depth.py \
      --workdir=runs/heads_depth --eval_args="--beam_size=1"

12 trials of 500 steps each at the Transformer-tiny width (128, MLP 256), greedy validation
decode per trial. Measured on a 2-core CPU: 1 h 48 min in all (6-14 min a trial), the sweep
pinned to one core while another run used the other. Results: docs/results.md "Heads x depth".
"""


def get_sweep(hyper):
  depth = hyper.zip(
    [
      hyper.sweep('config.num_encoder_layers', [1, 2, 4]),
      hyper.sweep('config.num_decoder_layers', [1, 2, 4]),
    ]
  )
  return hyper.product(
    [
      hyper.sweep('config.num_heads', [1, 2, 4, 8]),
      depth,
      hyper.fixed('config.num_train_steps', 500),
      # the recipe docs/results.md's table was measured with
      hyper.fixed('config.schedule', 'rsqrt'),
      hyper.fixed('config.dropout_rate', 0.3),
      hyper.fixed('config.matmul_dtype', 'float32'),
      hyper.fixed('config.batch_size', 64),
      hyper.fixed('config.pack_window', 1),  # next-fit packing, as then
      hyper.fixed('config.warmup_steps', 250),
      hyper.fixed('config.optimizer', 'adam'),
      hyper.fixed('config.weight_decay', 0.0),
      hyper.fixed('config.activation', 'relu'),
      hyper.fixed('config.position_embedding', 'sinusoidal'),
      hyper.fixed('config.qk_norm', 0.0),
      hyper.fixed('config.eval_every_steps', 500),
      hyper.fixed('config.checkpoint_every_steps', 500),
    ]
  )
