#!/usr/bin/env bash
# Quantized weights beside llama.cpp, one run: this engine's prefill and decode tokens/s with each model's matrices in
# f32, q8_0 and q4_0 (cluster-bench model --weights), then llama.cpp's own llama-bench on GGUF files of the same types
# (written by the same benchmark, as `cluster quantize` writes them). llama-bench is built from the llama.cpp source
# that node-llama-cpp ships, as bench/llama-server.sh builds llama-server (cached in bench/results/llama.cpp).
#   bash bench/quantized.sh [THREADS=1,2] [PRESETS=stories15M,stories110M]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-1,2}
presets=${2:-stories15M,stories110M}
root=bench/results/llama.cpp
if [[ ! -x $root/build/bin/llama-bench ]]; then
  [[ -x $root/build/bin/llama-server ]] || bash bench/llama-server.sh 1 1 > /dev/null   # configures and builds llama.cpp once
  ninja -C "$root/build" llama-bench
fi
dotnet build -c Release bench/Cluster.Bench -v quiet -nologo
grep -m1 "model name" /proc/cpuinfo
# The engine first; its run also writes bench/results/PRESET[-TYPE].gguf for llama.cpp (--no-llamacpp skips only node-llama-cpp).
dotnet bench/Cluster.Bench/bin/Release/net10.0/cluster-bench.dll model --threads "$threads" --presets "$presets" --weights f32,q8_0,q4_0 --no-llamacpp --write-gguf
echo
echo "llama.cpp (llama-bench: pp128 = prefill of 128 tokens, tg128 = 128 decode steps; tokens/s, mean of 5)"
for preset in ${presets//,/ }; do
  for type in "" -q8_0 -q4_0; do
    "$root/build/bin/llama-bench" -m "bench/results/$preset$type.gguf" -t "$threads" -p 128 -n 128 -r 5 -o md 2>/dev/null | grep -v "^$"
  done
done
