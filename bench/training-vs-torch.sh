#!/usr/bin/env bash
# Training throughput beside PyTorch, in one run: `cluster-bench training` (one shard at each thread count) and the
# TorchSharp peer (bench/TorchPeer: libtorch 2.10 training the same Llama shape, batch and AdamW) at the same thread
# counts, one process per row. Run from anywhere: bash bench/training-vs-torch.sh [--threads 1,2] [--presets stories15M]
# libtorch 2.10 needs glibc 2.38 and GCC 13's libstdc++; Debian 12 has 2.36 and GCC 12. The script fetches Debian 13's
# libc6, libstdc++6 and libgcc-s1 into bench/.torch-runtime (once), and runs the peer through a copy of the dotnet host
# whose ELF interpreter and library path point there (patchelf; the system's own libraries are untouched).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=1,2
presets=stories15M
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --presets) presets=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

runtime=$PWD/bench/.torch-runtime
libs=$runtime/root/usr/lib/x86_64-linux-gnu
if [ ! -e "$runtime/dotnet/dotnet" ]; then
  command -v patchelf >/dev/null || { apt-get install -y -q patchelf >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q patchelf >/dev/null; }; }
  mkdir -p "$runtime/debs" "$runtime/root" "$runtime/dotnet"
  curl -fsS -m 120 -o "$runtime/Packages.xz" http://deb.debian.org/debian/dists/trixie/main/binary-amd64/Packages.xz
  xz -df "$runtime/Packages.xz"
  for package in libc6 libstdc++6 libgcc-s1; do
    file=$(awk -v p="$package" '$0 == "Package: " p { f = 1 } f && /^Filename:/ { print $2; exit }' "$runtime/Packages")
    curl -fsS -m 300 -o "$runtime/debs/$package.deb" "http://deb.debian.org/debian/$file"
    dpkg-deb -x "$runtime/debs/$package.deb" "$runtime/root"
  done
  # The dotnet host finds the runtimes beside itself: a patched copy among links to the real installation.
  root=$(dirname "$(readlink -f "$(command -v dotnet)")")
  for entry in "$root"/*; do [ "$(basename "$entry")" = dotnet ] || ln -sfn "$entry" "$runtime/dotnet/$(basename "$entry")"; done
  cp "$root/dotnet" "$runtime/dotnet/dotnet"
  patchelf --set-interpreter "$libs/ld-linux-x86-64.so.2" --set-rpath "$libs" "$runtime/dotnet/dotnet"
fi

dotnet build -c Release bench/Cluster.Bench -v quiet -nologo
dotnet build -c Release bench/TorchPeer -v quiet -nologo
lscpu | sed -n 's/^Model name: *//p'
dotnet bench/Cluster.Bench/bin/Release/net10.0/cluster-bench.dll training --threads "$threads" --presets "$presets" --layouts ''
echo
echo "| model | trainer | threads | step ms | tokens/s | warm-up loss |"
echo "|---|---|---:|---:|---:|---:|"
for preset in ${presets//,/ }; do
  for t in ${threads//,/ }; do
    LD_LIBRARY_PATH=$libs "$runtime/dotnet/dotnet" bench/TorchPeer/bin/Release/net10.0/torch-peer.dll --threads "$t" --preset "$preset"
  done
done
