#!/usr/bin/env bash
# The served path beside llama.cpp's own server on the same file and load: builds llama-server once from the llama.cpp
# source that the npm package node-llama-cpp ships as a git bundle (../shared/reference/llama-cpp-build.md; 25-40 min
# on 2 cores, cached in bench/results/llama.cpp), writes random stories15M as GGUF, then runs `cluster-bench load`
# in-process (the gateway over one shard) and against `llama-server --parallel 32`, one after the other.
#   bash bench/llama-server.sh [CONCURRENCY=1,8,32] [REQUESTS=32]
set -euo pipefail
cd "$(dirname "$0")/.."
concurrency=${1:-1,8,32}
requests=${2:-32}
threads=$(nproc)
root=bench/results/llama.cpp
server=$root/build/bin/llama-server
if [[ ! -x $server ]]; then
  (cd bench/llamacpp && npm install --no-audit --no-fund --loglevel=error)
  [[ -d $root ]] || git clone -q bench/llamacpp/node_modules/node-llama-cpp/llama/gitRelease.bundle "$root"
  simd=(-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
  if grep -q avx512f /proc/cpuinfo; then simd+=(-DGGML_AVX512=ON); fi
  # GGML_NATIVE would use every flag the CPU reports; a VM may report AMX it does not run (SIGILL), so choose them here.
  cmake -S "$root" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF "${simd[@]}" \
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON > /dev/null
  ninja -C "$root/build" llama-server
fi
dotnet build -c Release bench/Cluster.Bench -v quiet -nologo
dotnet build -c Release src/Cli -v quiet -nologo
bench=bench/Cluster.Bench/bin/Release/net10.0/cluster-bench.dll
model=bench/results/stories15M-random.gguf
dotnet src/Cli/bin/Release/net10.0/cluster.dll make-model --preset stories15M --out "$model"
port=$((20000 + RANDOM % 20000))
"$server" -m "$model" -t "$threads" -tb "$threads" -np 32 -c 4096 --host 127.0.0.1 --port "$port" > bench/results/llama-server.log 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$port/health" > /dev/null; do sleep 1; done
echo "## Cluster (in-process gateway, one shard, $threads device threads)"
dotnet "$bench" load --concurrency "$concurrency" --requests "$requests" --prompt-tokens 32 --max-tokens 64
echo
echo "## llama-server (-t $threads, --parallel 32, same file)"
dotnet "$bench" load --url "http://127.0.0.1:$port" --model stories15M --concurrency "$concurrency" --requests "$requests" --prompt-tokens 32 --max-tokens 64
