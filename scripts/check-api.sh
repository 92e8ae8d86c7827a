#!/usr/bin/env bash
# Fails when the contract is badly formatted, breaks lint rules, or when the
# committed generated files are not what buf makes from api/ now.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/tools.sh
export PATH="$PWD/.tools/bin:$PATH"
buf format -d --exit-code
buf lint
bash scripts/gen.sh
if ! git diff --exit-code --stat -- gen server/apidescriptors.binpb ||
   [[ -n "$(git status --porcelain --untracked-files=all -- gen)" ]]; then
  echo "check-api: generated files are stale; run scripts/gen.sh and commit" >&2
  exit 1
fi
