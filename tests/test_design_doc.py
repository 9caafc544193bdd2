"""docs/DESIGN.md stays true: §1 lists exactly the modules on disk, room by
room; §8.1 names every entry point; §8.6 names every error class."""

import ast
import os
import re
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESIGN = os.path.join(REPO, "docs", "DESIGN.md")
# The rooms whose files §1 lists by path below the room's folder. A room's
# files are those below its folder that no deeper room claims, but for the
# room's own __init__.py (its docstring).
ROOMS = ("ssmtl_jax/base/", "ssmtl_jax/perception/", "ssmtl_jax/model/",
         "ssmtl_jax/data/", "ssmtl_jax/train/", "ssmtl_jax/evaluation/",
         "ssmtl_jax/serve/", "ssmtl_jax/jobs/", "configs/", "ssmtl_jax/",
         "data_prep/", "benchmarks/", "scripts/")
CODE = (".py", ".sh")


def _section(text, number):
  """The text of section ``number`` ('1', '8.1', ...) up to the next heading
  of the same or a higher level."""
  level = "##" if "." not in number else "###"
  start = re.search(rf"^{level} {re.escape(number)}\.? ", text, re.M)
  assert start, f"DESIGN.md has no section {number}"
  rest = text[start.end():]
  end = re.search(r"^##(#)? " if level == "###" else r"^## ", rest, re.M)
  return rest[:end.start()] if end else rest


def _table_rooms(section):
  """room -> the file names its row of the §1 table lists."""
  rooms = {}
  for line in section.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 4 and cells[1].startswith("`") and cells[1].endswith("/`"):
      rooms[cells[1].strip("`")] = set(re.findall(r"`([^`]+)`", cells[2]))
  return rooms


def _files_on_disk(room):
  deeper = [r for r in ROOMS if r != room and r.startswith(room)]
  out = set()
  for dirpath, dirnames, files in os.walk(os.path.join(REPO, room)):
    dirnames[:] = [d for d in dirnames if d != "__pycache__"]
    for f in files:
      rel = os.path.relpath(os.path.join(dirpath, f), REPO).replace(os.sep, "/")
      if f.endswith(CODE) and not any(rel.startswith(d) for d in deeper):
        out.add(rel[len(room):])
  out.discard("__init__.py")  # the room's own docstring
  return out


def _design():
  with open(DESIGN, encoding="utf-8") as f:
    return f.read()


@pytest.mark.parametrize("room", ROOMS)
def test_section_1_lists_every_module_of_each_room(room):
  listed = _table_rooms(_section(_design(), "1"))
  assert room in listed, f"DESIGN §1 has no row for {room}"
  on_disk = _files_on_disk(room)
  assert listed[room] == on_disk, (
      f"DESIGN §1, {room}: missing {sorted(on_disk - listed[room])}, "
      f"not on disk {sorted(listed[room] - on_disk)}")


def _entry_points():
  """Modules with a ``__main__`` block, as ``python -m`` names, and scripts."""
  out = set()
  for room in ROOMS:
    for rel in _files_on_disk(room):
      path = os.path.join(REPO, room, rel)
      if room == "scripts/":
        out.add(f"scripts/{rel}")
        continue
      if rel.endswith(".py") and "__main__" in open(path).read():
        out.add("python -m " + (room + rel)[:-3].replace("/", "."))
  return out


def test_section_8_1_names_every_entry_point():
  text = _section(_design(), "8.1")
  entries = _entry_points()
  assert "python -m ssmtl_jax.main" in entries  # the walk finds them
  missing = sorted(e for e in entries if e not in text)
  assert not missing, f"DESIGN §8.1 does not name {missing}"


def _error_classes():
  """Every class of the tree derived from errors.UserError."""
  bases = {}
  for room in ROOMS:
    for rel in _files_on_disk(room):
      if not rel.endswith(".py"):
        continue
      tree = ast.parse(open(os.path.join(REPO, room, rel)).read())
      for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
          bases[node.name] = {ast.unparse(b).split(".")[-1] for b in node.bases}
  users = {"UserError"}
  while True:
    more = {n for n, b in bases.items() if b & users} - users
    if not more:
      return users
    users |= more


def test_section_8_6_names_every_error_class():
  text = _section(_design(), "8.6")
  classes = _error_classes()
  assert {"ConfigError", "DataError", "RecordError"} <= classes
  missing = sorted(c for c in classes if not re.search(rf"\b{c}\b", text))
  assert not missing, f"DESIGN §8.6 does not name {missing}"


def test_the_checks_can_fail(tmp_path, monkeypatch):
  """A module missing from §1 and an error class missing from §8.6 fail."""
  text = _design()
  monkeypatch.setattr(
      sys.modules[__name__], "_design",
      lambda: text.replace("`pipeline.py`, ", "").replace("RecordError", "X"))
  with pytest.raises(AssertionError, match="pipeline.py"):
    test_section_1_lists_every_module_of_each_room("ssmtl_jax/perception/")
  with pytest.raises(AssertionError, match="RecordError"):
    test_section_8_6_names_every_error_class()
