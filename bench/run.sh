#!/usr/bin/env bash
# Runs every benchmark and prints the README's tables: GEMM GFLOP/s, then model prefill/decode tokens/s
# beside llama.cpp (installed here from npm: node-llama-cpp ships prebuilt llama.cpp binaries), training tokens/s and
# MFU (one shard, then per layout), then, on in-process
# Orleans clusters, grain transport MB/s, collective bus bandwidth, and serving tokens/s (continuous batching, layouts);
# then tokenizer encode times and a 10-minute soak through the gateway over HTTP.
set -euo pipefail
cd "$(dirname "$0")/.."
# npm ci rejects this lock file (npm drops the other platforms' optional binaries from it), so install from package.json.
(cd bench/llamacpp && npm install --no-audit --no-fund --loglevel=error)
dotnet build -c Release bench/Cluster.Bench -v quiet -nologo
bench=bench/Cluster.Bench/bin/Release/net10.0/cluster-bench.dll
dotnet "$bench" gemm --threads 1,2
echo
dotnet "$bench" model --threads 1,2 --presets stories15M,stories110M
echo
dotnet "$bench" training --threads 1,2 --presets stories15M
echo
dotnet "$bench" transport
echo
dotnet "$bench" collectives
echo
dotnet "$bench" serving
echo
dotnet "$bench" tokenizer
echo
dotnet "$bench" soak --minutes 10 --concurrency 32
