#!/usr/bin/env bash
# Builds the static poold binary exactly as the container ships it.
# Usage: scripts/build.sh [OUTPUT]   (default bin/poold)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bin/poold}
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$out" ./cmd/poold
