#!/usr/bin/env bash
# Runs the README's walkthrough exactly as written and checks what it shows:
# a 200 through the pool, the host and its idle connection, the idle timeout
# change and the connection closing with reason idle_timeout.
set -euo pipefail
cd "$(dirname "$0")/.."

script=$(mktemp)
out=$(mktemp)
{
  echo 'set -euo pipefail'
  echo 'set -m' # job control, so the README's %1 %2 %3 mean what they say
  awk '/<!-- walkthrough:begin -->/{on=1; next} /<!-- walkthrough:end -->/{on=0} on' README.md |
    awk '/^```sh$/{code=1; next} /^```$/{code=0; next} code'
} >"$script"

# go run leaves its compiled binaries running when the go command is killed,
# so match the binaries by their flags.
cleanup() {
  pkill -f -- '--listen=127.0.0.1:8080' 2>/dev/null || true
  pkill -f -- '--listen=127.0.0.1:7070' 2>/dev/null || true
}
trap cleanup EXIT
cleanup

echo "walkthrough: running $(grep -c . "$script") lines from README.md"
if ! timeout 300 bash "$script" >"$out" 2>&1; then
  echo "walkthrough: the README's commands failed:" >&2
  cat "$out" >&2
  exit 1
fi

fail=0
expect() { # description, pattern
  if ! grep -qE -- "$2" "$out"; then
    echo "walkthrough: expected $1 (pattern: $2)" >&2
    fail=1
  fi
}
expect "Do to answer 200" '"statusCode": 200'
# grpcurl prints bytes fields in base64: "hello from upstream: GET /hello\n".
expect "the upstream's body" '"body": "aGVsbG8gZnJvbSB1cHN0cmVhbTogR0VUIC9oZWxsbwo="'
# "hello from upstream: GET /one\n" and ".../two\n", each with its id.
expect "Pipeline to answer request 1" '"body": "aGVsbG8gZnJvbSB1cHN0cmVhbTogR0VUIC9vbmUK"'
expect "Pipeline to answer request 2" '"body": "aGVsbG8gZnJvbSB1cHN0cmVhbTogR0VUIC90d28K"'
expect "ListHosts to show the pool" '"key": "http://127.0.0.1:8080"'
expect "ListConnections to show an idle connection" 'CONNECTION_STATE_IDLE'
expect "UpdatePolicy to answer with the new idle timeout" '"idleConnTimeout": "2s"'
expect "WatchEvents to report the close" '"kind": "EVENT_KIND_CLOSED"'
expect "the close reason to be idle_timeout" '"reason": "idle_timeout"'
expect "GetEffectivePolicy to resolve the default policy" '"name": "policies/default"'
expect "GetEffectivePolicy to report every field" '"maxResponseHeaderBytes"'
if ((fail)); then
  echo "--- walkthrough output:" >&2
  cat "$out" >&2
  exit 1
fi
echo "walkthrough: ok"
