#!/usr/bin/env bash
# Builds the container provisioner's kernel image offline, from Debian's own
# packages only (no registry): debootstrap (minbase) of Debian into
# .cache/kernel-rootfs/, python3-ipykernel installed inside with apt, a user
# "kernel" (uid/gid 1000), then `podman import` of the tree as
# localhost/kgate-kernel-python3:bookworm. Fast when the image exists.
#
#   scripts/build-kernel-image.sh            # build if missing
#   scripts/build-kernel-image.sh --rebuild  # build again from scratch
#
# Environment: KGATE_IMAGE (the tag), KGATE_SUITE (bookworm), KGATE_MIRROR
# (default: the first Debian mirror apt uses here, else deb.debian.org),
# PODMAN (the podman binary, or "docker" to import into Docker instead).
# Needs root (debootstrap, chroot), debootstrap and podman (or docker).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${KGATE_IMAGE:-localhost/kgate-kernel-python3:bookworm}"
SUITE="${KGATE_SUITE:-bookworm}"
PODMAN="${PODMAN:-podman}"
ROOTFS=".cache/kernel-rootfs"
rebuild=0
[ "${1:-}" = "--rebuild" ] && rebuild=1

# The same options kgate's container provisioner passes (src/provisioner/container.ts):
# on machines whose hard ulimits are below podman's defaults, default_ulimits must be empty.
podman_cmd() {
  if [ "$PODMAN" = "docker" ]; then
    docker "$@"
    return
  fi
  mkdir -p .cache
  printf '[containers]\ndefault_ulimits = []\n' >.cache/containers.conf
  CONTAINERS_CONF=.cache/containers.conf "$PODMAN" --cgroup-manager cgroupfs --runtime runc --events-backend file "$@"
}

image_exists() {
  if [ "$PODMAN" = "docker" ]; then docker image inspect "$IMAGE" >/dev/null 2>&1; else podman_cmd image exists "$IMAGE"; fi
}

if [ "$rebuild" = 0 ] && image_exists; then
  echo "kgate image: $IMAGE exists" >&2
  exit 0
fi
[ "$(id -u)" -eq 0 ] || {
  echo "kgate image: debootstrap and chroot need root" >&2
  exit 1
}
command -v debootstrap >/dev/null || {
  echo "kgate image: debootstrap is missing (apt-get install debootstrap)" >&2
  exit 1
}

mirror="${KGATE_MIRROR:-}"
if [ -z "$mirror" ]; then
  # deb822 sources (URIs:) or one-line sources (deb URL suite ...): the first Debian (not -security) one.
  mirror="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}')"
  [ -n "$mirror" ] || mirror="$(cat /etc/apt/sources.list 2>/dev/null | awk '$1 == "deb" && $3 !~ /security/ {print $2; exit}')"
  [ -n "$mirror" ] || mirror="http://deb.debian.org/debian"
fi

started=$(date +%s)
if [ "$rebuild" = 1 ] || [ ! -f "$ROOTFS/.kgate-complete" ]; then
  rm -rf "$ROOTFS"
  mkdir -p "$ROOTFS"
  echo "kgate image: debootstrap $SUITE from $mirror into $ROOTFS" >&2
  debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$mirror" >&2
  # apt inside uses the same mirror; nothing from a registry.
  echo "deb $mirror $SUITE main" >"$ROOTFS/etc/apt/sources.list"
  mount -t proc proc "$ROOTFS/proc"
  trap 'umount "$ROOTFS/proc" 2>/dev/null || true' EXIT
  chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-ipykernel >&2
  chroot "$ROOTFS" /usr/sbin/groupadd -g 1000 kernel
  chroot "$ROOTFS" /usr/sbin/useradd -u 1000 -g 1000 -m -d /home/kernel -s /bin/sh kernel
  chroot "$ROOTFS" apt-get clean
  umount "$ROOTFS/proc"
  trap - EXIT
  rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin
  # Where kgate binds the kernel's ipc directory (the root is read-only, so the mount point must exist).
  mkdir -p "$ROOTFS/run/kgate"
  touch "$ROOTFS/.kgate-complete"
fi

echo "kgate image: importing $ROOTFS as $IMAGE" >&2
tar -C "$ROOTFS" --exclude=./.kgate-complete --numeric-owner -c . |
  podman_cmd import --change 'USER=1000:1000' --change 'WORKDIR=/home/kernel' --change 'CMD=["/usr/bin/python3"]' - "$IMAGE" >&2
echo "kgate image: $IMAGE built in $(($(date +%s) - started)) s" >&2
