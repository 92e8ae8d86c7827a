#!/usr/bin/env bash
# Installs what the test suite needs and the machine may lack: nginx (the
# real-world keep-alive upstream), curl, kubectl, Node.js, Python's grpcio and PHP
# with curl (the client examples), and the pinned Go tools.
# Idempotent: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# kubectl renders deploy/kubernetes (kustomize) for the manifests' test.
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
# The Python and PHP examples use Debian's packages, not pip or PECL.
/usr/bin/python3 -c 'import grpc' >/dev/null 2>&1 || missing+=(python3-grpcio)
command -v php >/dev/null 2>&1 || missing+=(php-cli)
php -r 'exit(function_exists("curl_init") ? 0 : 1);' >/dev/null 2>&1 || missing+=(php-curl)
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    sudo=sudo
  else
    sudo=
  fi
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # Package scripts must not start a system nginx on port 80: the tests run
  # their own on loopback ports.
  $sudo env RUNLEVEL=1 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if command -v service >/dev/null 2>&1; then
    $sudo service nginx stop >/dev/null 2>&1 || true
  fi
fi
bash scripts/tools.sh
