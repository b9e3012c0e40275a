#!/usr/bin/env bash
# Builds the real Kubernetes control plane that the Kubernetes tests run against:
# kube-apiserver, kube-scheduler and kube-controller-manager from k8s.io/kubernetes,
# the kubelet for the tests' real node (with Debian's containerd)
# (tools/k8s/kubernetes/go.mod) and etcd from go.etcd.io/etcd/server/v3
# (tools/k8s/etcd/go.mod), with the machine's Go, into .cache/k8s/<k8s-version>/bin/.
# A no-op when that directory already holds the binaries built from the same go.mod and
# go.sum files; then writes .cache/k8s/READY (the bin directory's absolute path).
#
#   scripts/build-k8s.sh            # build if missing
#   scripts/build-k8s.sh --rebuild  # build again
#
# Modules come from the Go module proxy (go.sum pins them); the first build takes long
# (tens of minutes on 2 cores), later ones reuse Go's build cache.
set -euo pipefail
cd "$(dirname "$0")/.."

rebuild=0
[ "${1:-}" = "--rebuild" ] && rebuild=1

# Go's own install location, for a shell whose PATH lacks it.
command -v go >/dev/null || [ ! -x /usr/local/go/bin/go ] || PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || {
  echo "build-k8s: go is not on PATH (the Kubernetes tests need Go to build the control plane)" >&2
  exit 1
}

K8S_MOD=tools/k8s/kubernetes
ETCD_MOD=tools/k8s/etcd
k8s_version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v1\./ { print $2 }' "$K8S_MOD/go.mod")
etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2 }' "$ETCD_MOD/go.mod")
[ -n "$k8s_version" ] && [ -n "$etcd_version" ] || {
  echo "build-k8s: cannot read the Kubernetes or etcd version from $K8S_MOD/go.mod, $ETCD_MOD/go.mod" >&2
  exit 1
}

bin_dir="$PWD/.cache/k8s/$k8s_version/bin"
binaries=(kube-apiserver kube-scheduler kube-controller-manager kubelet etcd)
# What the binaries were built from: a changed go.mod or go.sum builds them again.
stamp=$(cat "$K8S_MOD/go.mod" "$K8S_MOD/go.sum" "$ETCD_MOD/go.mod" "$ETCD_MOD/go.sum" | sha256sum | cut -d' ' -f1)

have_all() {
  [ "$(cat "$bin_dir/.built-from" 2>/dev/null)" = "$stamp" ] || return 1
  for b in "${binaries[@]}"; do [ -x "$bin_dir/$b" ] || return 1; done
}

mark_ready() {
  printf '%s\n' "$bin_dir" >.cache/k8s/READY.tmp
  mv .cache/k8s/READY.tmp .cache/k8s/READY
}

started=$(date +%s)
if [ "$rebuild" = 0 ] && have_all; then
  mark_ready
  echo "build-k8s: Kubernetes $k8s_version and etcd $etcd_version cached in $bin_dir ($(($(date +%s) - started)) s)" >&2
  exit 0
fi

mkdir -p "$bin_dir"
rm -f "$bin_dir/.built-from" .cache/k8s/READY
echo "build-k8s: building Kubernetes $k8s_version and etcd $etcd_version into $bin_dir (long the first time)" >&2

# Static binaries, as Kubernetes' own release builds them; the version the API server
# reports (/version) is stamped in as hack/lib/version.sh does.
export CGO_ENABLED=0
minor=${k8s_version#v*.}
minor=${minor%%.*}
major=${k8s_version#v}
major=${major%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

(cd "$K8S_MOD" && go build -mod=readonly -trimpath -ldflags="$ldflags" -o "$bin_dir/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-controller-manager)
echo "build-k8s: Kubernetes control plane built ($(($(date +%s) - started)) s)" >&2
kubelet_started=$(date +%s)
(cd "$K8S_MOD" && go build -mod=readonly -trimpath -ldflags="$ldflags" -o "$bin_dir/kubelet" k8s.io/kubernetes/cmd/kubelet)
echo "build-k8s: kubelet built ($(($(date +%s) - kubelet_started)) s)" >&2
(cd "$ETCD_MOD" && go build -mod=readonly -trimpath -ldflags="-s -w" -o "$bin_dir/etcd" go.etcd.io/etcd/server/v3)

printf '%s\n' "$stamp" >"$bin_dir/.built-from"
mark_ready
echo "build-k8s: built in $(($(date +%s) - started)) s: $(cd "$bin_dir" && echo "${binaries[@]}")" >&2
