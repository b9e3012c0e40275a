#!/usr/bin/env bash
# Builds kgate's own image (the top-level Dockerfile) with podman, with no
# image registry:
#
# 1. a local Node.js base, localhost/kgate-node:<major>-bookworm, standing in
#    for docker.io/library/node:<major>-bookworm-slim: the Debian bookworm
#    image of the container provisioner (scripts/build-kernel-image.sh, built
#    from Debian's packages, no registry) plus this machine's Node.js binary
#    and npm, at the paths the official image uses (/usr/local/bin/node,
#    /usr/local/lib/node_modules/npm). The build fails when a library node
#    links against is missing from that root filesystem (ldd) or node does not
#    run there. Kept until the host's Node.js version changes.
# 2. `podman build` of the Dockerfile on that base. npm ci needs the npm
#    registry (package-lock.json has no "resolved" URLs, so npm asks for
#    each package's metadata, and this machine's npm cache holds it only in
#    part): the build uses the host's network, registry, CA file and proxy
#    variables, and its npm cache ($HOME/.npm) as a throw-away overlay with
#    prefer-offline, so what is cached is not downloaded again. No image
#    registry is asked for anything (--pull=never).
#
#   scripts/build-gateway-image.sh             # tag localhost/kgate:dev (and :build-cache, its build stage)
#   scripts/build-gateway-image.sh --rebuild   # the base too, and no layer cache
#
# Environment: KGATE_GATEWAY_IMAGE (the tag), KGATE_KERNEL_IMAGE (the Debian
# base, localhost/kgate-kernel-python3:bookworm), NPM_CACHE ($HOME/.npm),
# and npm's own configuration (registry, cafile, *_proxy).
# Needs root (rootful podman, as the container provisioner) and podman, runc.
#
# Operators build the Dockerfile as it is, with the official base and their
# registry: `docker build -t kgate .` (docs/kubernetes.md).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${KGATE_GATEWAY_IMAGE:-localhost/kgate:dev}"
BUILD_CACHE="${IMAGE%:*}:build-cache"
KERNEL_IMAGE="${KGATE_KERNEL_IMAGE:-localhost/kgate-kernel-python3:bookworm}"
NPM_CACHE="${NPM_CACHE:-$HOME/.npm}"
rebuild=0
[ "${1:-}" = "--rebuild" ] && rebuild=1

# The options kgate's container provisioner passes (src/provisioner/container.ts): on machines
# whose hard ulimits are below podman's defaults, default_ulimits must be empty, and a build's
# RUN steps are containers too (an absolute path: the build's copier runs elsewhere).
mkdir -p .cache
printf '[containers]\ndefault_ulimits = []\n' >.cache/containers.conf
podman_cmd() {
  CONTAINERS_CONF="$PWD/.cache/containers.conf" podman --cgroup-manager cgroupfs --runtime runc --events-backend file "$@"
}

node_bin="$(readlink -f "$(command -v node)")"
node_version="$("$node_bin" --version)"
node_major="${node_version#v}"
node_major="${node_major%%.*}"
[ "$node_major" -ge 20 ] || {
  echo "kgate gateway image: Node.js 20 or later is needed, this is $node_version" >&2
  exit 1
}
npm_dir="$(dirname "$node_bin")/../lib/node_modules/npm"
[ -f "$npm_dir/bin/npm-cli.js" ] || {
  echo "kgate gateway image: npm is not at $npm_dir" >&2
  exit 1
}
BASE="localhost/kgate-node:${node_major}-bookworm"

started=$(date +%s)
if ! podman_cmd image exists "$KERNEL_IMAGE"; then
  scripts/build-kernel-image.sh
fi

base_version="$(podman_cmd image inspect --format '{{index .Labels "kgate.node-version"}}' "$BASE" 2>/dev/null || true)"
if [ "$rebuild" = 1 ] || [ "$base_version" != "$node_version" ]; then
  echo "kgate gateway image: building $BASE from $KERNEL_IMAGE and Node.js $node_version ($node_bin)" >&2
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx"' EXIT
  cp "$node_bin" "$ctx/node"
  cp -a "$npm_dir" "$ctx/npm"
  cat >"$ctx/Containerfile" <<EOF
FROM $KERNEL_IMAGE
USER root
COPY node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
RUN if ldd /usr/local/bin/node | grep 'not found'; then echo 'a library of node is missing' >&2; exit 1; fi \\
 && ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \\
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \\
 && node --version && npm --version
WORKDIR /
CMD ["node"]
EOF
  podman_cmd build --network=none --pull=never --label "kgate.node-version=$node_version" -t "$BASE" "$ctx" >&2
  rm -rf "$ctx"
  trap - EXIT
fi

# npm in the build reaches the registry as npm here does: this machine's registry and CA file
# (an intercepting proxy's CA, say) in an npmrc, and its proxy variables (podman passes
# *_proxy on by default), on the host's network. The npmrc, the CA file and the npm cache
# are build mounts, never in a layer; the cache is an overlay, so the build's writes are
# thrown away, and with prefer-offline a package in it is not asked for again.
registry="$(npm config get registry)"
cafile="$(npm config get cafile)"
npmrc="$(mktemp)"
trap 'rm -f "$npmrc"' EXIT
{
  echo "registry=$registry"
  echo "prefer-offline=true"
  echo "update-notifier=false"
} >"$npmrc"
mounts=(--volume "$npmrc:/usr/local/etc/npmrc:ro")
[ -d "$NPM_CACHE/_cacache" ] && mounts+=(--volume "$(readlink -f "$NPM_CACHE"):/root/.npm:O")
if [ -n "$cafile" ] && [ "$cafile" != "null" ] && [ "$cafile" != "undefined" ]; then
  echo "cafile=/run/kgate-build/ca.crt" >>"$npmrc"
  mounts+=(--volume "$(readlink -f "$cafile"):/run/kgate-build/ca.crt:ro")
fi
# The image this build replaces, removed after it (not the layer cache: that is what keeps rebuilds short).
previous="$(podman_cmd image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
echo "kgate gateway image: building $IMAGE on $BASE (npm from $registry)" >&2
layers=()
[ "$rebuild" = 1 ] && layers=(--no-cache)
build=(podman_cmd build --network=host --pull=never "${mounts[@]}" --build-arg "NODE_IMAGE=$BASE" -f Dockerfile)
# The build stage first, tagged, so that its layers stay the cache of the next build; then the
# image, from the same cache.
"${build[@]}" "${layers[@]}" --target build -t "$BUILD_CACHE" . >&2
"${build[@]}" -t "$IMAGE" . >&2
current="$(podman_cmd image inspect --format '{{.Id}}' "$IMAGE")"
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
  podman_cmd image rm "$previous" >/dev/null 2>&1 || true
fi
# Earlier builds' build-stage layers, no longer under any tag: only this Dockerfile's (its label).
podman_cmd image prune --force --filter label=kgate.stage=build >/dev/null 2>&1 || true
echo "kgate gateway image: $IMAGE built in $(($(date +%s) - started)) s" >&2
