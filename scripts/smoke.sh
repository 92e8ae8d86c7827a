#!/usr/bin/env bash
# Smoke-tests the static binary as the container runs it: no config files, an
# empty environment, default ports. It must answer health over grpcurl, serve
# metrics, and exit 0 on SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/tools.sh
grpcurl="$PWD/.tools/bin/grpcurl"
bin=$(mktemp -d)/poold
bash scripts/build.sh "$bin"
if ldd "$bin" >/dev/null 2>&1; then
  echo "smoke: $bin is dynamically linked" >&2
  exit 1
fi

log=$(mktemp)
(cd "$(mktemp -d)" && exec env -i "$bin") >"$log" 2>&1 &
pid=$!
trap 'kill -9 $pid 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  if "$grpcurl" -plaintext -max-time 1 127.0.0.1:7070 grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING; then
    break
  fi
  sleep 0.1
done
grep -q SERVING <<<"$("$grpcurl" -plaintext -max-time 2 127.0.0.1:7070 grpc.health.v1.Health/Check)"
grep -q poold.v1.HTTPService <<<"$("$grpcurl" -plaintext -max-time 2 127.0.0.1:7070 list)"
metrics=$(curl -fsS --max-time 2 http://127.0.0.1:9090/metrics)
grep -q grpc_server_handled_total <<<"$metrics"

kill -TERM $pid
status=0
wait $pid || status=$?
trap - EXIT
if [[ $status -ne 0 ]]; then
  echo "smoke: poold exited $status on SIGTERM" >&2
  cat "$log" >&2
  exit 1
fi
echo "smoke: ok (static binary served health and metrics, exited 0 on SIGTERM)"
