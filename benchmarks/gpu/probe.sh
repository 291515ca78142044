#!/usr/bin/env bash
# First device call (.gpu/a carried): the SAE training path's CUDA tests, then the capture and training
# benchmarks on a random-weight model of the default's architecture (speed does not depend on the
# weights; the real weights come with the second call). Logs to $OUT.
cd "$(dirname "$0")/../.."
source benchmarks/gpu/env.sh
{ nvidia-smi -L; python3 -c 'import torch, transformers, bitsandbytes as b; print(torch.__version__, transformers.__version__, b.__version__, torch.cuda.get_device_name())'; } 2>&1 | tee $OUT/probe.log
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_sae.py -k cuda 2>&1 | tail -15 | tee -a $OUT/probe.log
python3 - <<'PY' 2>&1 | tail -3 | tee -a $OUT/probe.log
import shutil, torch
from pathlib import Path
from transformers import AutoConfig, AutoModelForCausalLM
torch.manual_seed(0)
m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained("/tmp/smol"))
m.save_pretrained("/tmp/rand")
for f in Path("/tmp/smol").iterdir():
    if f.name.startswith(("tokenizer", "chat_template")):
        shutil.copy(f, "/tmp/rand")
print("random-weight model saved", sum(p.numel() for p in m.parameters()))
PY
cd benchmarks
timeout 100 python3 bench_capture.py --device cuda --model /tmp/rand --workspace /tmp/wsr --tokens 16384 --batch-size 64 --repeats 1 2>&1 | grep -v Warning | tee $OUT/capture-random.log
timeout 120 python3 bench_train.py --device cuda --model /tmp/rand --workspace /tmp/wsr --steps 300 --e2e-steps 8 --only "mistudio topk (defaults),sparsify topk (defaults" 2>&1 | grep -v Warning | tee $OUT/train-random.log
