#!/usr/bin/env bash
# Installs the pinned tools the build and the tests use into .tools/bin.
# Idempotent: a tool already at its pinned version is not rebuilt.
set -euo pipefail
cd "$(dirname "$0")/.."

BUF_VERSION=v1.75.0
PROTOC_GEN_GO_VERSION=$(go list -m -f '{{.Version}}' google.golang.org/protobuf)
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2
GRPCURL_VERSION=v1.9.4
# Must match the vtprotobuf runtime in go.mod that the generated code imports.
VTPROTO_VERSION=$(go list -m -f '{{.Version}}' github.com/planetscale/vtprotobuf)

bin="$PWD/.tools/bin"
mkdir -p "$bin"

install() { # name module@version
  local name=$1 pkg=$2 stamp="$bin/.$1.version"
  if [[ -x "$bin/$name" && -f "$stamp" && "$(cat "$stamp")" == "$pkg" ]]; then
    return
  fi
  echo "tools: installing $pkg" >&2
  GOBIN="$bin" GOFLAGS=-mod=mod go install "$pkg"
  echo "$pkg" >"$stamp"
}

install buf "github.com/bufbuild/buf/cmd/buf@$BUF_VERSION"
install protoc-gen-go "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
install protoc-gen-go-grpc "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
install protoc-gen-go-vtproto "github.com/planetscale/vtprotobuf/cmd/protoc-gen-go-vtproto@$VTPROTO_VERSION"
install grpcurl "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"

# etcd for the tests of the shared policy store. Its server module has
# replace directives, which go install refuses, so tools/etcd is a module of
# its own that requires it (poold's go.mod never takes the server's
# dependencies) and builds etcd's own main. The pin is in tools/etcd/go.mod.
ETCD_VERSION=$(cd tools/etcd && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
etcd_stamp="$bin/.etcd.version"
if [[ ! -x "$bin/etcd" || ! -f "$etcd_stamp" || "$(cat "$etcd_stamp")" != "$ETCD_VERSION" ]]; then
  echo "tools: building etcd $ETCD_VERSION" >&2
  (cd tools/etcd && CGO_ENABLED=0 go build -trimpath -o "$bin/etcd" .)
  echo "$ETCD_VERSION" >"$etcd_stamp"
fi
