"""The import layers (docs/DESIGN.md §1), checked by walking every import,
function-level ones included:

* ``ssmtl_jax`` library modules never import ``data_prep``; only the job
  layer (``runner``, which builds missing records and reads frames for
  annotated videos, and ``score``, the streaming scorer, which runs the
  builder's detector, cubes and teachers on a live source) does;
* ``data_prep``'s library modules use only ``ssmtl_jax``'s base modules
  (errors, schema, files, ground truth, cli); its tools (recall, build)
  may also read records and score;
* nothing imports the trainer except the job layer: scoring and evaluation
  restore weights without it.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

JOB_LAYER = {"ssmtl_jax.runner", "ssmtl_jax.main", "ssmtl_jax.score"}
SSMTL_BASE = {"ssmtl_jax.errors", "ssmtl_jax.schema", "ssmtl_jax.files",
              "ssmtl_jax.ground_truth", "ssmtl_jax.cli"}
DATA_PREP_TOOLS = {
    "data_prep.build": SSMTL_BASE | {"ssmtl_jax.config_checks"},
    "data_prep.recall": SSMTL_BASE | {"ssmtl_jax.input_pipeline",
                                      "ssmtl_jax.scoring", "ssmtl_jax.metrics"},
}


def _modules(package):
  for dirpath, _, files in os.walk(os.path.join(REPO, package)):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(dirpath, f), REPO)[:-3]
        name = rel.replace(os.sep, ".").removesuffix(".__init__")
        yield name, os.path.join(dirpath, f)


def _imports(path):
  """Absolute module names imported anywhere in the file."""
  tree = ast.parse(open(path).read(), path)
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      # `from ssmtl_jax import scoring` imports ssmtl_jax.scoring.
      out.update(f"{node.module}.{a.name}" for a in node.names)
      out.add(node.module)
  return out


def _first_party(names, package):
  return {n for n in names if n == package or n.startswith(package + ".")}


ALL = sorted(list(_modules("ssmtl_jax")) + list(_modules("data_prep")))


@pytest.mark.parametrize("name,path", ALL, ids=[n for n, _ in ALL])
def test_layers(name, path):
  imports = _imports(path)
  if name.startswith("ssmtl_jax."):
    if name not in JOB_LAYER:
      assert not _first_party(imports, "data_prep"), (
          f"{name} imports data_prep: "
          f"{sorted(_first_party(imports, 'data_prep'))}")
  else:
    allowed = DATA_PREP_TOOLS.get(name, SSMTL_BASE)
    used = {n for n in _first_party(imports, "ssmtl_jax") if n != "ssmtl_jax"}
    assert used <= allowed, f"{name} imports {sorted(used - allowed)}"
  if name not in JOB_LAYER and name != "ssmtl_jax.train":
    assert "ssmtl_jax.train" not in imports, f"{name} imports the trainer"


def test_the_walk_sees_function_level_imports(tmp_path):
  f = tmp_path / "m.py"
  f.write_text("def g():\n  from data_prep import builder\n")
  assert "data_prep.builder" in _imports(str(f))
