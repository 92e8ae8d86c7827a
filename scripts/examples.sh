#!/usr/bin/env bash
# Runs the client examples in other languages against a real poold and a
# local upstream.
set -euo pipefail
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
bash scripts/build.sh "$tmp/poold"
go build -o "$tmp/upstream" ./examples/upstream
"$tmp/upstream" --listen=127.0.0.1:18080 >"$tmp/upstream.log" 2>&1 &
upstream=$!
"$tmp/poold" --listen=127.0.0.1:17070 --http-listen=127.0.0.1:19090 --http-api-listen=127.0.0.1:17071 \
  --egress-allow=127.0.0.1/32 --shutdown-delay=0s >"$tmp/poold.log" 2>&1 &
poold=$!
trap 'kill $upstream $poold 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  curl -fs http://127.0.0.1:19090/readyz >/dev/null 2>&1 && curl -fs http://127.0.0.1:18080/ >/dev/null 2>&1 && break
  sleep 0.1
done

echo "examples: node"
(cd examples/node && npm ci --no-audit --no-fund --loglevel=error >/dev/null && node client.js 127.0.0.1:17070 http://127.0.0.1:18080/from-node)
echo "examples: python"
/usr/bin/python3 examples/python/client.py 127.0.0.1:17070 http://127.0.0.1:18080/from-python

echo "examples: php"
php examples/php/client.php 127.0.0.1:17071 http://127.0.0.1:18080/from-php
echo "examples: ok"
