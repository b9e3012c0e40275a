#!/usr/bin/env bash
# Makes the images the tests' real kubelet node imports into containerd, offline, cached under
# .cache/k8s/ (test/helpers/k8s-kubelet.ts calls this):
# - the pod sandbox ("pause") image: a static Go program that waits for SIGTERM/SIGINT, as a
#   docker-archive tar (.cache/k8s/pause/pause.tar, tagged localhost/kgate-pause:1), assembled
#   here rather than pulled: the tests' machines reach no image registry;
# - with --kernel-image IMAGE: `podman save` of that local image
#   (.cache/k8s/images/<image id>.tar; a rebuilt image has a new id, so a new tar).
# Prints the tar paths, one a line: the pause tar first, then the kernel image's.
set -euo pipefail
cd "$(dirname "$0")/.."

kernel_image=
[ "${1:-}" = "--kernel-image" ] && kernel_image=${2:?--kernel-image needs an image}

command -v go >/dev/null || [ ! -x /usr/local/go/bin/go ] || PATH="$PATH:/usr/local/go/bin"

PAUSE_TAG=localhost/kgate-pause:1
pause_dir="$PWD/.cache/k8s/pause"
pause_tar="$pause_dir/pause.tar"
if [ ! -s "$pause_tar" ]; then
  command -v go >/dev/null || { echo "kubelet-assets: go is not on PATH (it builds the pause image)" >&2; exit 1; }
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/src" "$work/rootfs" "$pause_dir"
  cat >"$work/src/main.go" <<'GO'
// pause: the pod sandbox's process; it holds the pod's namespaces until the kubelet stops it.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGINT, syscall.SIGTERM)
	<-c
}
GO
  printf 'module kgate.local/pause\n\ngo 1.22\n' >"$work/src/go.mod"
  (cd "$work/src" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags="-s -w" -o "$work/rootfs/pause" .)
  python3 - "$work" "$PAUSE_TAG" "$pause_tar.tmp" <<'PY'
import hashlib, io, json, os, sys, tarfile
work, tag, out = sys.argv[1:]
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
    info = t.gettarinfo(os.path.join(work, "rootfs/pause"), arcname="pause")
    info.uid = info.gid = 0; info.uname = info.gname = ""; info.mtime = 0; info.mode = 0o755
    with open(os.path.join(work, "rootfs/pause"), "rb") as f:
        t.addfile(info, f)
layer_bytes = layer.getvalue()
diff_id = hashlib.sha256(layer_bytes).hexdigest()
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/pause"]},
                     "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]}}).encode()
config_id = hashlib.sha256(config).hexdigest()
manifest = json.dumps([{"Config": config_id + ".json", "RepoTags": [tag], "Layers": [diff_id + "/layer.tar"]}]).encode()
with tarfile.open(out, mode="w") as t:
    for name, data in ((config_id + ".json", config), (diff_id + "/layer.tar", layer_bytes), ("manifest.json", manifest)):
        info = tarfile.TarInfo(name); info.size = len(data); info.mode = 0o644
        t.addfile(info, io.BytesIO(data))
PY
  mv "$pause_tar.tmp" "$pause_tar"
fi
echo "$pause_tar"

if [ -n "$kernel_image" ]; then
  id=$(podman image inspect --format '{{.Id}}' "$kernel_image") || {
    echo "kubelet-assets: no local image $kernel_image (scripts/build-kernel-image.sh or setup builds it)" >&2
    exit 1
  }
  images="$PWD/.cache/k8s/images"
  mkdir -p "$images"
  tar="$images/$id.tar"
  if [ ! -s "$tar" ]; then
    rm -f "$tar.tmp"
    podman save --format docker-archive -o "$tar.tmp" "$kernel_image" >&2
    mv "$tar.tmp" "$tar"
  fi
  echo "$tar"
fi
