"""The packages' imports point one way (docs/design.md, Layers): read from the source with ast,
every import of a project package goes to the package itself or to one below it."""

import ast
import pathlib

import pytest

from helpers import ROOT

# package -> the project packages it may import (besides itself), lowest layers last
MAY_IMPORT = {
  'training': {'evaluation', 'core', 'model', 'input_pipeline'},
  'evaluation': {'core', 'model', 'input_pipeline'},
  'core': {'model', 'input_pipeline'},
  'input_pipeline': {'model'},
  'model': set(),
  'configs': set(),
}


def imports(path: pathlib.Path) -> set:
  """The module names that `path` imports (absolute imports)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names.add(node.module)
  return names


@pytest.mark.parametrize('package', sorted(MAY_IMPORT))
def test_a_package_imports_only_itself_and_the_layers_below_it(package):
  allowed = MAY_IMPORT[package] | {package}
  wrong = [
    f'{path.relative_to(ROOT)} imports {name}'
    for path in sorted((pathlib.Path(ROOT) / package).rglob('*.py'))
    for name in sorted(imports(path))
    if name.split('.')[0] in MAY_IMPORT and name.split('.')[0] not in allowed
  ]
  assert not wrong, wrong


def test_the_layers_have_no_cycle():
  """The allowed edges themselves form no cycle: no package may import one that imports it."""
  for package, below in MAY_IMPORT.items():
    seen, frontier = set(), set(below)
    while frontier:
      seen |= frontier
      frontier = set().union(*(MAY_IMPORT[p] for p in frontier)) - seen
    assert package not in seen, package


def test_no_private_jax_or_flax_module_is_imported():
  root = pathlib.Path(ROOT)
  sources = [
    p for p in root.glob('**/*.py') if p.relative_to(root).parts[0] not in ('.venv', 'data')
  ]
  offenders = [
    f'{path.relative_to(root)} imports {name}'
    for path in sorted(sources)
    for name in sorted(imports(path))
    if name.split('.')[0] in ('jax', 'flax') and '_src' in name.split('.')  # private modules
  ]
  assert not offenders, offenders
