#!/usr/bin/env bash
# A device call with .gpu/p carried (the packages sparsify needs): the SAE path's CUDA tests, then
# profile_step.py. Logs to $OUT.
cd "$(dirname "$0")/../.."
[ -d /tmp/site ] || tar -C /tmp -xJf .gpu/p/site.tar.xz
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_sae.py -k cuda > $OUT/tests.log 2>&1
tail -3 $OUT/tests.log
timeout 200 python3 benchmarks/gpu/profile_step.py > $OUT/profile.log 2>&1
grep -E "tokens/s|calls" $OUT/profile.log
