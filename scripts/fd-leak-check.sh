#!/usr/bin/env bash
# Resource-leak check (issue 5): 10,000 connections, each an `rcmd run` with a command (echo,
# exit codes, signals, missing commands, clients killed mid-command), then the server must have
# no zombie children, no children at all, and no more file descriptors than before.
#
#   bash scripts/fd-leak-check.sh                          10,000 connections, 8 at a time
#   bash scripts/fd-leak-check.sh --connections 1000 --clients 4
#
# Loopback only, bounded in count and time (--max-seconds). Not part of CI; the test
# `many_connections_with_commands_leave_no_zombies_and_no_leaked_descriptors` in tests/faults.rs
# is the CI-sized version. Results: docs/hardening.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
exec python3 scripts/hardening.py fd-check "$@"
