#!/usr/bin/env bash
# Soak test (issue 5): many clients with mixed commands against one server, for minutes.
#
#   bash scripts/soak.sh                         120 s, 16 concurrent clients
#   bash scripts/soak.sh --duration 180 --clients 24
#
# Loopback only, bounded in time (--duration, at most 3600 s) and count. Every output is checked
# (1 MB outputs and stdin round trips by SHA-256); prints commands run, bytes verified, errors,
# the server's peak RSS and its descriptor count at the start and the end. Exits non-zero on any
# wrong output or leak. Not part of CI. Results: docs/hardening.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec python3 scripts/hardening.py soak "$@"
