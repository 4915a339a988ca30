"""Test setup: import the project from the repo root; keep JAX on the CPU with f32 matmuls;
share one persistent compilation cache among this run's processes."""

import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import jax  # noqa: E402

jax.config.update('jax_default_matmul_precision', 'highest')

CACHE_ENV = 'JAX_COMPILATION_CACHE_DIR'
_created_cache = None


def pytest_configure(config):
  """Many tests compile the same tiny programs, in this process, in the xdist workers and in
  the train.py/eval.py subprocesses they start; a compilation cache shared by all of them
  (created here in the first process, inherited through the environment, removed at the end)
  compiles each once. Cached executables are the ones a fresh compile builds, so no result
  changes. A cache directory set by the caller is used as given and kept."""
  del config
  global _created_cache
  if CACHE_ENV not in os.environ:
    _created_cache = os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix='jax-test-cache-')
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'  # tiny programs compile fast
  os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '-1'
  jax.config.update('jax_compilation_cache_dir', os.environ[CACHE_ENV])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)


def pytest_unconfigure(config):
  del config
  if _created_cache:
    shutil.rmtree(_created_cache, ignore_errors=True)
