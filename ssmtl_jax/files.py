"""Small file helpers shared by both layers (``data_prep`` imports them too).

Paths go through ``etils.epath``, so ``gs://`` and other remote paths work.
"""

from __future__ import annotations

import hashlib

from etils import epath


def sha256_file(path) -> str:
  """Hex sha256 of a file's bytes, read in 1 MiB blocks (flat memory)."""
  digest = hashlib.sha256()
  with epath.Path(path).open("rb") as f:
    while block := f.read(1 << 20):
      digest.update(block)
  return digest.hexdigest()
