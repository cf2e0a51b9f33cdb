#!/usr/bin/env bash
# Redeems one large file through a freshly started receiver (embedded
# default) and reports the process's peak memory above idle, the throughput,
# and whether the stored object's SHA-256 matches the file's.
#
#   scripts/measure-upload-memory.sh [SIZE_MIB]      (default 1024)
#   PROFILE=dev scripts/measure-upload-memory.sh 256 (skip the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
profile=${PROFILE:-release}
target_dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
cargo build -q --profile "$profile" --bin upload-receiver
bin=target/$target_dir/upload-receiver

work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
export UPLOAD_RECEIVER__DATA_DIR=$work/data UPLOAD_RECEIVER__SERVER__LISTEN=127.0.0.1:0
"$bin" serve >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 100); do grep -q "listening on" "$work/out" 2>/dev/null && break; sleep 0.1; done
base=$(sed -n 's/^upload-receiver listening on //p' "$work/out")

echo "== writing a ${size_mib} MiB random file"
head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$work/big.bin"
expected=$(sha256sum "$work/big.bin" | cut -d' ' -f1)
printf 'first' >"$work/small.bin"

curl -sf -F file=@"$work/small.bin" "$("$bin" sign --method POST "$base/api/photo/upload")" >/dev/null
token=$(curl -sf "$("$bin" sign "$base/api/photo/get-replace-token?photo_id=1")" |
  sed -n 's:.*<replace_token>\(.*\)</replace_token>.*:\1:p')
idle_kib=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")

echo "== redeeming it"
start=$(date +%s.%N)
answer=$(curl -sf -F replace_token="$token" -F file=@"$work/big.bin" "$base/api/photo/redeem-replace-token")
end=$(date +%s.%N)
peak_kib=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
stored=$(ls -t "$work"/data/objects/media/* | head -n1)
actual=$(sha256sum "$stored" | cut -d' ' -f1)

echo "answer:            $answer"
echo "idle RSS:          $((idle_kib / 1024)) MiB"
echo "peak RSS (VmHWM):  $((peak_kib / 1024)) MiB"
echo "peak above idle:   $(((peak_kib - idle_kib) / 1024)) MiB"
awk -v s="$start" -v e="$end" -v m="$size_mib" 'BEGIN { printf "throughput:        %.0f MiB/s (%.1f s)\n", m / (e - s), e - s }'
if [ "$expected" = "$actual" ]; then echo "checksum:          match ($expected)"; else
  echo "checksum:          MISMATCH (sent $expected, stored $actual)"; exit 1; fi
