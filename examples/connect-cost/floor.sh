#!/bin/bash
# The floor of the kernel strategy: its system calls made by a program itself (no shim), against a
# plain connect, and the cost of each single call the shim makes (floor.c). In a private network
# namespace (slice IP 198.51.100.10, peer 203.0.113.1, both on lo), as connect_cost.sh.
#
#   sudo examples/connect-cost/floor.sh        (N=3000 ROUNDS=7 by default)
set -euo pipefail
[ "${1:-}" = "--inside" ] || exec unshare -n "$0" --inside "$@"
dir=$(cd "$(dirname "$0")" && pwd)
bin=$(mktemp -d)/floor
gcc -O2 -o "$bin" "$dir/floor.c"
. "$dir/peers.sh"
"$bin" 203.0.113.1 7000 198.51.100.10 40000 40511 "${N:-3000}" "${ROUNDS:-7}"
