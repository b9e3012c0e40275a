#!/usr/bin/env bash
# Builds kustomize (sigs.k8s.io/kustomize/kustomize/v5, one pinned release) from the Go
# module proxy into .cache/kustomize/<version>/kustomize, for the deploy test
# (test/integration/deploy.test.ts renders deploy/ with it, as `kubectl apply -k` would).
# A no-op when that binary is there; prints its path on stdout.
#
#   scripts/build-kustomize.sh
#
# The release's own go.mod and go.sum pin its dependencies, and the Go checksum database
# checks the module itself (go install module@version). Needs Go 1.26 or later (v5.8.3 needs 1.27).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=v5.8.2
dir="$PWD/.cache/kustomize/$VERSION"
bin="$dir/kustomize"

command -v go >/dev/null || [ ! -x /usr/local/go/bin/go ] || PATH="$PATH:/usr/local/go/bin"
if [ ! -x "$bin" ]; then
  command -v go >/dev/null || {
    echo "build-kustomize: go is not on PATH" >&2
    exit 1
  }
  started=$(date +%s)
  mkdir -p "$dir"
  echo "build-kustomize: building kustomize $VERSION into $dir" >&2
  GOBIN="$dir" GOFLAGS=-buildvcs=false CGO_ENABLED=0 go install -trimpath -ldflags='-s -w' "sigs.k8s.io/kustomize/kustomize/v5@$VERSION" >&2
  echo "build-kustomize: built in $(($(date +%s) - started)) s" >&2
fi
"$bin" version >/dev/null
printf '%s\n' "$bin"
