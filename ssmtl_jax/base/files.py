"""Small file helpers every floor shares.

Paths go through ``etils.epath``, so ``gs://`` and other remote paths work.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from etils import epath

from ssmtl_jax.base import errors


def sha256_file(path) -> str:
  """Hex sha256 of a file's bytes, read in 1 MiB blocks (flat memory)."""
  digest = hashlib.sha256()
  with epath.Path(path).open("rb") as f:
    while block := f.read(1 << 20):
      digest.update(block)
  return digest.hexdigest()


def check_writable_dir(path, what: str) -> None:
  """Fails early, before any expensive work, when the folder ``path`` could
  not be made or written: ``errors.ConfigError`` naming ``what`` (the flag or
  config key) and the path. Writes nothing that stays: a probe file is made
  and removed in the nearest existing folder of ``path``. Remote paths
  (``gs://`` ...) are left to the job itself.

  Permissions are tested by writing, not with ``os.access``, which says yes
  to root on read-only folders (but not on read-only file systems).
  """
  path = os.fspath(path)
  if "://" in path:
    return
  probe = os.path.abspath(path)
  while not os.path.exists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      break
    probe = parent
  if not os.path.isdir(probe):
    raise errors.ConfigError(
        f"{what}: cannot write to {path}: {probe} is a file, not a folder")
  try:
    fd, name = tempfile.mkstemp(prefix=".ssmtl_write_check_", dir=probe)
    os.close(fd)
    os.remove(name)
  except OSError as e:
    raise errors.ConfigError(
        f"{what}: cannot write to {path} ({e.strerror or e})") from None


def local_copy(path) -> str:
  """A local file with the bytes of ``path``: ``path`` itself when local,
  else a copy in the temporary folder (named by the path's hash, made once
  per machine and atomically, so workers sharing a machine share it)."""
  path = os.fspath(path)
  if "://" not in path:
    return path
  name = hashlib.sha256(path.encode()).hexdigest()[:16]
  local = os.path.join(tempfile.gettempdir(), "ssmtl_files",
                       f"{name}-{os.path.basename(path)}")
  if not os.path.exists(local):
    os.makedirs(os.path.dirname(local), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(local))
    with os.fdopen(fd, "wb") as out, epath.Path(path).open("rb") as f:
      while block := f.read(16 << 20):
        out.write(block)
    os.replace(tmp, local)
  return local
