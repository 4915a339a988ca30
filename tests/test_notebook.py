"""notebooks/attention_step_by_step.ipynb runs top to bottom; its cells assert that NumPy
written from the formulas and the project's modules agree."""

import os

import nbclient
import nbformat

from helpers import ROOT


def test_the_attention_notebook_runs_top_to_bottom():
  path = os.path.join(ROOT, 'notebooks', 'attention_step_by_step.ipynb')
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
    notebook,
    timeout=600,
    kernel_name='python3',
    resources={'metadata': {'path': os.path.dirname(path)}},
  )
  client.execute()  # raises CellExecutionError, with the cell and its traceback, on a failure
  printed = ''.join(
    output.get('text', '') for cell in notebook.cells for output in cell.get('outputs', [])
  )
  assert 'NumPy and the module agree' in printed and 'translation:' in printed
