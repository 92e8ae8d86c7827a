#!/usr/bin/env bash
# The whole test suite. It installs what it needs first (scripts/deps.sh), so
# it runs on a fresh machine from a clean clone.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

step "installing test dependencies"
bash scripts/deps.sh

step "gofmt and go vet"
unformatted=$(gofmt -l $(git ls-files '*.go' | grep -v '^gen/'))
if [[ -n "$unformatted" ]]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi
go vet ./...
# The end-to-end benchmark is a module of its own (bench/go.mod), so that
# poold's dependencies never include its baselines.
(cd bench && go vet ./... && go test -count=1 ./...)

step "contract: buf format, buf lint, generated code fresh"
bash scripts/check-api.sh

step "go test -race"
go test -race -count=1 -timeout=20m ./...

step "1 GiB each way through Stream in bounded memory (without the race detector, which would slow it tenfold)"
go test -count=1 -run '^TestStreamMovesLargeBodiesBothWaysInBoundedMemory$' -v ./server | grep -E '^(=== RUN|--- |    |ok|FAIL|PASS)'

step "allocations per request, pinned (without the race detector, which allocates on its own account)"
go test -count=1 -run 'TestRoundTripAllocations|TestParseResponseHeadAllocs|TestRequestHeadWritesWithoutAllocating' -v ./pool | grep -E '^(=== RUN|--- |    |ok|FAIL|PASS)'
go test -count=1 -run 'TestDoAllocations' -v ./server | grep -E '^(=== RUN|--- |    |ok|FAIL|PASS)'

step "policy store shared through etcd: three replicas, a real three-member cluster, convergence p99"
go test -count=1 -run '^TestReplicasOverEtcdConvergeWithinASecondAndLoseNoUpdate$' -v ./cmd/poold | grep -E '^(--- |convergence|ok|FAIL|PASS)'

step "chaos soak: 60s of hostile upstreams, cancels and policy swaps"
POOLD_SOAK_DURATION=${POOLD_SOAK_DURATION:-60s} go test -race -count=1 -run '^TestSoak$' -v ./server | grep -E '^ *(--- |soak)|^(ok|FAIL|PASS)'

step "static binary smoke test"
bash scripts/smoke.sh

step "README walkthrough, exactly as written"
bash scripts/walkthrough.sh

step "clients in other languages"
bash scripts/examples.sh

step "end-to-end benchmark, a short run so that it keeps working (its numbers gate nothing)"
bash scripts/bench-e2e.sh --short

echo
echo "all checks passed"
