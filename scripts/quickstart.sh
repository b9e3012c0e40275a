#!/usr/bin/env bash
# One command from a fresh clone to a running gateway with local kernels on
# 127.0.0.1:8888 (pass any kgate option to change that, e.g. --port 0).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node dist/cli.js "$@"
