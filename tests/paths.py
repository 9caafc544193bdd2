"""Where the tests find the real UCSD Ped2 data: $SSMTL_PED2, else
../shared/data/ped2 beside the repository (as in CI). Tests that need it skip
when it is absent."""

import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PED2 = os.environ.get("SSMTL_PED2") or os.path.normpath(
    os.path.join(REPO, "..", "shared", "data", "ped2"))
