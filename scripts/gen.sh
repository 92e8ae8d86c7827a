#!/usr/bin/env bash
# Regenerates everything derived from api/: the Go code in gen/ and the
# documented descriptor set that server reflection serves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/tools.sh
export PATH="$PWD/.tools/bin:$PATH"
buf generate
buf build -o server/apidescriptors.binpb
