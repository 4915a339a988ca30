r"""The issue's PyTorch reference: nn.Transformer training-step throughput on the same shapes.

Needs PyTorch, which the project does not depend on; use a separate virtualenv:

  python -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch
  /tmp/tvenv/bin/python benchmarks/torch_baseline.py [--shape=tiny|small] [--compile]

Shapes as in benchmarks/train_step.py: batch 128 pairs, source and target length 32,
vocabulary 10000, one embedding shared by source, target and output projection, dropout 0.1,
Adam, label-smoothed (0.1) cross-entropy, causal decoder mask; eager mode unless --compile.
Prints target tokens/s (median of --repeats runs of --steps steps), the float32 2048x2048 matmul
GFLOP/s PyTorch reaches in the same process, and peak RSS, so that the JAX figures of
benchmarks/train_step.py can be compared on the machine at hand.
"""

import argparse
import resource
import statistics
import time

import torch
from torch import nn

SHAPES = {
  'tiny': dict(layers=4, dim=128, heads=4, mlp=256),
  'small': dict(layers=6, dim=256, heads=4, mlp=1024),
}


class Seq2Seq(nn.Module):
  """nn.Transformer with one embedding for source, target and the output projection."""

  def __init__(self, vocab, layers, dim, heads, mlp, dropout):
    super().__init__()
    self.embed = nn.Embedding(vocab, dim)
    self.pos = nn.Parameter(torch.randn(1, 512, dim) * 0.02)
    self.transformer = nn.Transformer(
      dim, heads, layers, layers, mlp, dropout, batch_first=True, norm_first=True
    )
    self.scale = dim**0.5

  def forward(self, src, tgt):
    n = tgt.shape[1]
    mask = nn.Transformer.generate_square_subsequent_mask(n, device=tgt.device)
    s = self.embed(src) * self.scale + self.pos[:, : src.shape[1]]
    t = self.embed(tgt) * self.scale + self.pos[:, :n]
    h = self.transformer(s, t, tgt_mask=mask, tgt_is_causal=True)
    return h @ self.embed.weight.T


def cpu_name():
  """The CPU's model name from /proc/cpuinfo ('' where there is none)."""
  try:
    with open('/proc/cpuinfo') as f:
      return next(
        (line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), ''
      )
  except OSError:
    return ''


def matmul_peak_gflops(n=2048, reps=10):
  x = torch.ones(n, n)
  x @ x
  t = time.perf_counter()
  for _ in range(reps):
    x @ x
  return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--shape', choices=sorted(SHAPES), default='tiny')
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--length', type=int, default=32)
  parser.add_argument('--vocab', type=int, default=10000)
  parser.add_argument('--compile', action='store_true', help='torch.compile the model')
  args = parser.parse_args()

  torch.manual_seed(0)
  model = Seq2Seq(args.vocab, dropout=0.1, **SHAPES[args.shape])
  model.train()
  run = torch.compile(model) if args.compile else model
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
  loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

  def batch():
    return (
      torch.randint(1, args.vocab, (args.batch, args.length)),
      torch.randint(1, args.vocab, (args.batch, args.length + 1)),
    )

  def step(src, tgt):
    optimizer.zero_grad(set_to_none=True)
    logits = run(src, tgt[:, :-1])
    loss = loss_fn(logits.reshape(-1, args.vocab), tgt[:, 1:].reshape(-1))
    loss.backward()
    optimizer.step()
    return loss

  t = time.perf_counter()
  for _ in range(3):  # warm-up (and compilation with --compile)
    step(*batch())
  warmup_s = time.perf_counter() - t
  rates = []
  for _ in range(args.repeats):
    data = [batch() for _ in range(args.steps)]
    t = time.perf_counter()
    for src, tgt in data:
      loss = step(src, tgt)
    loss.item()
    rates.append(args.steps * args.batch * args.length / (time.perf_counter() - t))
  peak = matmul_peak_gflops()
  rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
  mode = 'torch.compile' if args.compile else 'eager'
  print(
    f'== PyTorch {torch.__version__} nn.Transformer, {mode}, {args.shape}: batch {args.batch}'
    f' x length {args.length}, {torch.get_num_threads()} threads, {cpu_name()}'
  )
  print(
    f'target tokens/s          {statistics.median(rates):,.0f}   (median of {args.repeats} x '
    f'{args.steps} steps)'
  )
  print(f'f32 matmul peak GFLOP/s  {peak:.1f}')
  print(f'warm-up (3 steps)        {warmup_s:.1f} s')
  print(f'peak RSS                 {rss_gb:.2f} GB')


if __name__ == '__main__':
  main()
