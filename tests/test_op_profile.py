"""benchmarks/op_profile.py: per-op times from a profiler trace, named by the compiled HLO."""

import jax
import jax.numpy as jnp

from benchmarks import op_profile

HLO = """\
HloModule jit_f, entry_computation_layout={(f32[8,8]{1,0})->f32[8,8]{1,0}}

%fused_computation (param_0: f32[8,8]) -> f32[8,8] {
  %param_0 = f32[8,8]{1,0} parameter(0)
  ROOT %add.1 = f32[8,8]{1,0} add(%param_0, %param_0)
}

ENTRY %main.5 (x.1: f32[8,8]) -> f32[8,8] {
  %x.1 = f32[8,8]{1,0} parameter(0)
  %dot.2 = f32[8,8]{1,0} dot(%x.1, %x.1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, \
metadata={op_name="jit(f)/dot_general" source_file="t.py" source_line=3}
  ROOT %add_fusion = f32[8,8]{1,0} fusion(%dot.2), kind=kLoop, calls=%fused_computation, \
metadata={op_name="jit(f)/add"}
}
"""


def test_op_sources_reads_opcode_fusion_kind_and_op_name():
  sources = op_profile.op_sources(HLO)
  assert sources['dot.2'] == ('dot', 'jit(f)/dot_general')
  assert sources['add_fusion'] == ('kLoop', 'jit(f)/add')  # a ROOT fusion: its kind, not 'fusion'
  assert sources['x.1'] == ('parameter', '')
  assert sources['add.1'] == ('add', '')  # instructions inside fused computations are listed too


def test_op_times_names_the_compiled_ops_of_each_call():
  f = jax.jit(lambda a: jnp.tanh(a @ a) * 2.0 + 1.0)
  x = jnp.ones((256, 256), jnp.float32)
  compiled = f.lower(x).compile()
  calls = 3
  times = op_profile.op_times(lambda: compiled(x), calls)
  sources = op_profile.op_sources(compiled.as_text())
  assert times, 'the trace recorded no HLO op events'
  assert set(times) <= set(sources), set(times) - set(sources)
  for op, (seconds, count) in times.items():
    assert seconds > 0 and count % calls == 0, (op, seconds, count)
  assert any(sources[op][1].endswith('dot_general') for op in times), (times, sources)
