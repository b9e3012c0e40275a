#!/usr/bin/env bash
# Installs what kgate needs on a Debian/Ubuntu machine with Node.js 20+:
# the npm packages, the build (gateway and demo page), Debian's python3-ipykernel
# when no Python kernelspec is found, and python3-matplotlib for the demo page's
# plot. With --test it also installs what the test suite drives, schemathesis
# (pinned, from PyPI) among it, in .venv-test/.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

has_python_kernelspec() {
  local dirs=()
  IFS=: read -r -a extra <<< "${JUPYTER_PATH:-}"
  for d in "${extra[@]}"; do [ -n "$d" ] && dirs+=("$d/kernels"); done
  dirs+=("${JUPYTER_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/jupyter}/kernels" /usr/local/share/jupyter/kernels /usr/share/jupyter/kernels)
  for d in "${dirs[@]}"; do
    [ -f "$d/python3/kernel.json" ] && return 0
  done
  return 1
}

# Installed, not merely known to dpkg: a package removed but not purged still answers `dpkg -s`.
installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

debs=()
if [ "$want_test" = 1 ]; then
  # The tests drive Debian's real clients and kernels (known versions), whatever else is
  # installed: ipykernel, jupyter server (--gateway-url and the benchmark's peer),
  # matplotlib (rich output), tornado's websocket client, Chromium for the demo page, and
  # venv for the one PyPI tool (schemathesis, below), bubblewrap for the sandbox
  # provisioner's tests, and podman, runc, catatonit (podman's --init, only recommended)
  # and debootstrap for the container provisioner's (its image is built below, from
  # Debian's packages), iproute2 and nftables for the isolated kernels' egress, containerd
  # and the CNI plugins (only suggested by containerd; podman may bring netavark instead)
  # for the real kubelet's node.
  for p in python3-ipykernel python3-jupyter-server python3-matplotlib python3-tornado chromium python3-venv bubblewrap podman runc containerd containernetworking-plugins catatonit debootstrap iproute2 nftables; do
    installed "$p" || debs+=("$p")
  done
else
  has_python_kernelspec || debs+=(python3-ipykernel)
  # The demo page that quickstart.sh serves draws a plot.
  installed python3-matplotlib || debs+=(python3-matplotlib)
fi

if [ ${#debs[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "kgate setup: installing Debian packages: ${debs[*]}" >&2
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${debs[@]}" >&2
fi

# Schemathesis fuzzes the API against its own OpenAPI description; Debian does not package
# it, so it comes from PyPI at one version, into a venv of its own (skipped when there).
SCHEMATHESIS=schemathesis==4.32.5
if [ "$want_test" = 1 ] && [ "$(.venv-test/bin/schemathesis --version 2>/dev/null)" != "schemathesis, version ${SCHEMATHESIS#*==}" ]; then
  echo "kgate setup: installing $SCHEMATHESIS into .venv-test" >&2
  python3 -m venv .venv-test
  .venv-test/bin/pip install -q --disable-pip-version-check "$SCHEMATHESIS" >&2
fi

# The benchmark's peers of today (jupyter_server 2, kernel_gateway 3, enterprise_gateway 3.2),
# pinned, from PyPI, each in .venv-peers/<name>/ (test/bench-smoke.test.ts runs them).
if [ "$want_test" = 1 ]; then
  scripts/setup-bench-peers.sh >&2
fi

# The container provisioner's test image (localhost/kgate-kernel-python3:bookworm), built
# offline from Debian's packages; a no-op when it exists. Needs root (debootstrap, chroot).
if [ "$want_test" = 1 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    scripts/build-kernel-image.sh
  else
    sudo scripts/build-kernel-image.sh
  fi
fi

# The real Kubernetes control plane of the Kubernetes tests (etcd, kube-apiserver,
# kube-scheduler, kube-controller-manager), built from source with the machine's Go into
# .cache/k8s/; a no-op when built.
if [ "$want_test" = 1 ]; then
  scripts/build-k8s.sh
  # kustomize, which the deploy test renders deploy/ with (Go module proxy; a no-op when built).
  scripts/build-kustomize.sh >/dev/null
fi

echo "kgate setup: installing npm packages and building" >&2
npm ci --no-audit --no-fund --loglevel=error >&2
npm run --silent build >&2

# kgate's own image (the Dockerfile) for the deploy test, on a local Node.js base made from
# the kernel image above; npm ci in it prefers what npm's cache holds (after the npm ci above).
if [ "$want_test" = 1 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    scripts/build-gateway-image.sh
  else
    sudo scripts/build-gateway-image.sh
  fi
fi
