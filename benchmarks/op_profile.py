"""Where a compiled step spends its time: per-HLO-op totals from a `jax.profiler` trace.

XLA:CPU records one trace event per executed thunk (a fusion, a dot, a copy, ...) with the HLO
instruction's name in its `hlo_op` stat. `op_times` runs a function under the profiler and sums
those events per instruction; `op_sources` reads, from the compiled module's text, what each
instruction is (its opcode or fusion kind) and which JAX operation it came from (the
`op_name` metadata, e.g. `jit(train_step)/transpose(jvp(...))/dot_general`), so that the table
names model code rather than `fusion.123`. The trace is parsed with the XPlane protocol buffer
that TensorFlow ships (`tensorflow.tsl.profiler.protobuf`), so no profiler plugin is needed.

Times of events on different threads add up, so the column sums can exceed the wall time when
XLA runs ops on both cores at once.
"""

import collections
import glob
import re
import tempfile

import jax

# Trace events that are the executor's own bookkeeping, not an HLO op's work.
_SKIP_PREFIXES = ('ThreadpoolListener', 'ThunkExecutor', 'end: ')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+\s+([\w\-]+)\(')
_FUSION_KIND = re.compile(r'kind=(k\w+)')
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def op_times(run, calls: int):
  """Calls `run()` `calls` times under the profiler; {hlo op name: (seconds, events)}."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top

  space = xplane_pb2.XSpace()
  with tempfile.TemporaryDirectory(prefix='op_profile_') as directory:
    with jax.profiler.trace(directory):
      for _ in range(calls):
        jax.block_until_ready(run())
    with open(glob.glob(f'{directory}/**/*.xplane.pb', recursive=True)[0], 'rb') as f:
      space.ParseFromString(f.read())
  totals = collections.defaultdict(lambda: [0.0, 0])
  for plane in space.planes:
    hlo_op_stat = next((k for k, m in plane.stat_metadata.items() if m.name == 'hlo_op'), None)
    if hlo_op_stat is None:
      continue
    for line in plane.lines:
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        if name.startswith(_SKIP_PREFIXES):
          continue
        op = next(
          (
            plane.stat_metadata[s.ref_value].name if s.ref_value else s.str_value
            for s in event.stats
            if s.metadata_id == hlo_op_stat
          ),
          None,
        )
        if op is None:
          continue
        totals[op][0] += event.duration_ps * 1e-12
        totals[op][1] += 1
  return {op: (seconds, count) for op, (seconds, count) in totals.items()}


def op_sources(hlo_text: str):
  """{instruction name: (opcode or fusion kind, op_name metadata)} from compiled HLO text."""
  sources = {}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, opcode = match.groups()
    kind = _FUSION_KIND.search(line) if opcode == 'fusion' else None
    op_name = _OP_NAME.search(line)
    sources[name] = (kind.group(1) if kind else opcode, op_name.group(1) if op_name else '')
  return sources


def print_op_table(times, sources, calls: int, top: int = 25, width: int = 100):
  """Prints the `top` ops by total time: ms per call, share of all op time, kind, source."""
  total = sum(seconds for seconds, _ in times.values())
  print(
    f'== per-op time, {calls} calls, {1e3 * total / calls:.1f} ms of op time per call '
    f'({len(times)} ops)'
  )
  by_kind = collections.defaultdict(float)
  by_primitive = collections.defaultdict(float)
  for op, (seconds, _) in times.items():
    by_kind[sources.get(op, ('?', ''))[0]] += seconds
    by_primitive[sources.get(op, ('?', ''))[1].rsplit('/', 1)[-1] or '?'] += seconds
  for label, shares in (('kind', by_kind), ('primitive', by_primitive)):
    print(
      f'by {label}: '
      + ', '.join(
        f'{key} {100 * s / total:.1f}%'
        for key, s in sorted(shares.items(), key=lambda kv: -kv[1])[:8]
      )
    )
  print(f'{"ms/call":>8} {"share":>6} {"n/call":>6}  {"op":24s} {"kind":10s} source')
  for op, (seconds, count) in sorted(times.items(), key=lambda kv: -kv[1][0])[:top]:
    kind, source = sources.get(op, ('?', ''))
    source = source if len(source) <= width else '...' + source[-(width - 3) :]
    print(
      f'{1e3 * seconds / calls:8.2f} {100 * seconds / total:5.1f}% {count / calls:6.1f}  '
      f'{op[:24]:24s} {kind[:10]:10s} {source}'
    )
