"""Heads x depth at fixed width on Multi30k En->De (Vaswani et al. 2017, Table 3 rows (A)/(C)).

  python sweep.py --config=configs/default.py --sweep=configs/sweeps/heads_depth.py \
      --workdir=runs/heads_depth --eval_args="--beam_size=1"

12 trials of 700 steps each at the Transformer-tiny width (128, MLP 256). Estimated from the
measured step times of the default batch on a 2-core CPU (~0.55 s/step at depth 1, ~1.1 s at
depth 4) plus a greedy validation decode per trial: about 1 h 50 min in all. Not yet run: the
README gets the measured time and table when it is.
"""


def get_sweep(hyper):
  depth = hyper.zip([hyper.sweep('config.num_encoder_layers', [1, 2, 4]),
                     hyper.sweep('config.num_decoder_layers', [1, 2, 4])])
  return hyper.product([
      hyper.sweep('config.num_heads', [1, 2, 4, 8]),
      depth,
      hyper.fixed('config.num_train_steps', 500),
      hyper.fixed('config.warmup_steps', 250),
      hyper.fixed('config.eval_every_steps', 500),
      hyper.fixed('config.checkpoint_every_steps', 500),
  ])
