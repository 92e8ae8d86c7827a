#!/usr/bin/env bash
# The end-to-end benchmark: poold (unary and Pipeline), two minimal gRPC
# hops and nginx, each in front of one local upstream, and poold and the
# net/http hop again in front of an upstream serving HTTP/2 over TLS
# (poold-h2, hop-nethttp-h2), measured by the CPU time each spends per
# request. Installs nginx if it is missing, builds
# everything into a temporary directory, and passes its arguments on to
# bench/cmd/bench-e2e (try --help; --short for a quick run).
# Usage: scripts/bench-e2e.sh [--short] [--reps=3] [--duration=3s] [--variant name=flags] ...
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
bash scripts/build.sh "$bin/poold"
(cd bench && CGO_ENABLED=0 go build -trimpath -o "$bin" ./cmd/...)

nginx=$(command -v nginx || echo /usr/sbin/nginx)
exec_args=(
  --poold="$bin/poold"
  --upstream="$bin/upstream"
  --hop-nethttp="$bin/hop-nethttp"
  --hop-fasthttp="$bin/hop-fasthttp"
  --nginx="$nginx"
)
"$bin/bench-e2e" "${exec_args[@]}" "$@"
