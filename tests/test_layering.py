"""The floors of the house (docs/DESIGN.md §1), checked by walking every
import of every module of the tree, function-level ones included.

A module imports only modules on its own floor or below, and on its own
floor only its own room (``ssmtl_jax.perception`` and ``ssmtl_jax.model``
share floor 1 and never import each other; nor do ``train`` and
``evaluation``). The import graph has no cycles, and scoring a video or
evaluating a checkpoint never loads the training loop.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("ssmtl_jax", "data_prep", "benchmarks", "configs", "scripts")

# Room (module-name prefix) -> floor. The longest matching prefix wins.
FLOORS = {
    "ssmtl_jax.base": 0,
    "ssmtl_jax.perception": 1,
    "ssmtl_jax.model": 1,
    "ssmtl_jax.data": 2,
    "ssmtl_jax.train": 3,
    "ssmtl_jax.evaluation": 3,
    "ssmtl_jax.serve": 4,
    "ssmtl_jax.jobs": 5,
    "configs": 5,
    # The entry points users type, and the tools above everything.
    "ssmtl_jax.main": 6,
    "ssmtl_jax.evaluate": 6,
    "ssmtl_jax.validate": 6,
    "ssmtl_jax.export": 6,
    "ssmtl_jax.score": 6,
    "data_prep": 6,
    "benchmarks": 6,
    "scripts": 6,
}
# Who may load the training loop (the trainer module, not the step).
TRAINER = "ssmtl_jax.train.trainer"
TRAINER_USERS = {"ssmtl_jax.jobs.runner", "ssmtl_jax.train.trainer"}


def _modules():
  out = {}
  for package in PACKAGES:
    for dirpath, _, files in os.walk(os.path.join(REPO, package)):
      for f in files:
        if f.endswith(".py"):
          rel = os.path.relpath(os.path.join(dirpath, f), REPO)[:-3]
          out[rel.replace(os.sep, ".").removesuffix(".__init__")] = (
              os.path.join(dirpath, f))
  return out


MODULES = _modules()


def _imports(path):
  """Absolute module names imported anywhere in the file."""
  tree = ast.parse(open(path).read(), path)
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      assert not node.level, f"{path}: relative import"
      # `from ssmtl_jax.base import errors` imports ssmtl_jax.base.errors.
      out.update(f"{node.module}.{a.name}" for a in node.names)
      out.add(node.module)
  return out


def _first_party(names):
  """The project's modules (and packages) among ``names``."""
  return {n for n in names if n in MODULES}


def _room(name):
  best = max((p for p in FLOORS if name == p or name.startswith(p + ".")),
             key=len, default=None)
  return best


@pytest.mark.parametrize("name", sorted(MODULES))
def test_floors(name):
  if name in ("ssmtl_jax",):
    assert not _first_party(_imports(MODULES[name]))
    return
  room = _room(name)
  assert room is not None, f"{name}: on no floor (add it to FLOORS and §1)"
  for dep in sorted(_first_party(_imports(MODULES[name]))):
    if dep == "ssmtl_jax" or name == dep or name.startswith(dep + "."):
      continue  # a package's own __init__
    dep_room = _room(dep)
    assert dep_room is not None, f"{dep}: on no floor"
    assert FLOORS[dep_room] <= FLOORS[room], (
        f"{name} (floor {FLOORS[room]}) imports {dep} (floor "
        f"{FLOORS[dep_room]})")
    if FLOORS[dep_room] == FLOORS[room] and FLOORS[room] < 6:
      assert dep_room == room, (
          f"{name} ({room}) imports {dep} ({dep_room}): rooms on one floor "
          "stay apart")


def _graph():
  return {n: {d for d in _first_party(_imports(p)) if d != n}
          for n, p in MODULES.items()}


def test_no_import_cycles():
  graph = _graph()
  state, stack = {}, []

  def visit(n):
    state[n] = "open"
    stack.append(n)
    for d in sorted(graph.get(n, ())):
      if n.startswith(d + "."):
        continue  # a module's own package
      if state.get(d) == "open":
        cycle = stack[stack.index(d):] + [d]
        pytest.fail("import cycle: " + " -> ".join(cycle))
      if d not in state:
        visit(d)
    stack.pop()
    state[n] = "done"

  for n in sorted(graph):
    if n not in state:
      visit(n)


def _closure(name):
  graph, seen, todo = _graph(), set(), [name]
  while todo:
    n = todo.pop()
    for d in graph.get(n, ()):
      if d not in seen:
        seen.add(d)
        todo.append(d)
  return seen


@pytest.mark.parametrize("entry", ["ssmtl_jax.score", "ssmtl_jax.evaluate",
                                   "ssmtl_jax.export", "ssmtl_jax.validate",
                                   "data_prep.build"])
def test_scoring_and_evaluating_never_load_the_trainer(entry):
  assert TRAINER not in _closure(entry), (
      f"{entry} reaches {TRAINER} through its imports")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_the_runner_imports_the_training_loop(name):
  if name not in TRAINER_USERS and not name.startswith(("tests", "scripts")):
    assert TRAINER not in _imports(MODULES[name]), f"{name} imports it"


def test_the_walk_sees_function_level_imports(tmp_path):
  f = tmp_path / "m.py"
  f.write_text("def g():\n  from ssmtl_jax.data import builder\n")
  assert "ssmtl_jax.data.builder" in _imports(str(f))


def test_a_lower_floor_importing_a_higher_one_fails(monkeypatch, tmp_path):
  """The rule can fail: base importing the evaluator is refused."""
  f = tmp_path / "m.py"
  f.write_text("from ssmtl_jax.evaluation import evaluator\n")
  monkeypatch.setitem(MODULES, "ssmtl_jax.base.fake", str(f))
  with pytest.raises(AssertionError, match="floor 0"):
    test_floors("ssmtl_jax.base.fake")
  f.write_text("from ssmtl_jax.model import network\n")
  monkeypatch.setitem(MODULES, "ssmtl_jax.perception.fake", str(f))
  with pytest.raises(AssertionError, match="rooms on one floor"):
    test_floors("ssmtl_jax.perception.fake")
