#!/usr/bin/env bash
# One command from a fresh clone to a running gateway with local kernels on
# 127.0.0.1:8888 (pass any kgate option to change that, e.g. --port 0), and the
# demo page on 127.0.0.1:8889: a second origin, which kgate allows. The last
# line printed is the page's address, with the gateway and token in it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node dist/cli.js --demo-port 8889 "$@"
