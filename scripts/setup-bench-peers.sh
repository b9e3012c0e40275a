#!/usr/bin/env bash
# Installs the benchmark's peers of today from PyPI, each into a venv of its own under
# .venv-peers/<name>/, at pinned versions: the top package by version, and every package
# of the venv by bench/peers/<name>.txt (a constraints file: pip installs nothing else).
#   jupyter-server      jupyter_server 2.x (current)
#   kernel-gateway      jupyter_kernel_gateway 3.x (on jupyter_server 2.x)
#   enterprise-gateway  jupyter_enterprise_gateway 3.2 (with its own pins: jupyter_server 1.24,
#                       jupyter_client 6)
# Idempotent: a venv whose stamp matches its pin and constraints is left alone. Prints what
# it installed. Built on Debian's /usr/bin/python3 (python3-venv), the same interpreter as
# the ipykernel every server starts. Debian's jupyter_server 1.23 (scripts/setup.sh --test)
# stays the reference.
#   scripts/setup-bench-peers.sh [name...]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=/usr/bin/python3
declare -A PIN=(
  [jupyter-server]="jupyter_server==2.21.1"
  [kernel-gateway]="jupyter_kernel_gateway==3.0.1"
  [enterprise-gateway]="jupyter_enterprise_gateway==3.2.3"
)
ORDER=(jupyter-server kernel-gateway enterprise-gateway)

if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "kgate bench peers: installing python3-venv" >&2
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends python3-venv >&2
fi

names=("$@")
[ ${#names[@]} -eq 0 ] && names=("${ORDER[@]}")

for name in "${names[@]}"; do
  spec="${PIN[$name]:-}"
  if [ -z "$spec" ]; then
    echo "kgate bench peers: unknown peer $name (know ${ORDER[*]})" >&2
    exit 2
  fi
  constraints="bench/peers/$name.txt"
  venv=".venv-peers/$name"
  stamp="$venv/kgate-pin"
  want="$spec $(sha256sum "$constraints" | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c 'import sys' 2>/dev/null; then
    echo "kgate bench peers: $name: $spec already installed in $venv"
    continue
  fi
  echo "kgate bench peers: $name: installing $spec into $venv" >&2
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-input -c "$constraints" "$spec" >&2
  echo "$want" >"$stamp"
  echo "kgate bench peers: $name: installed $spec in $venv:"
  "$venv/bin/pip" freeze --disable-pip-version-check | grep -iE '^(jupyter|tornado|pyzmq|traitlets)' | sed 's/^/  /'
done
