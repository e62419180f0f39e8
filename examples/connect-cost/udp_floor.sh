#!/bin/bash
# The floor of a UDP connect placed by the shim: its system calls made by a program itself (no
# shim), against a plain socket+connect+close (udp_floor.c). In a private network namespace
# (slice IP 198.51.100.10, peer 203.0.113.1 with a UDP socket bound on port 7001, both on lo),
# as connect_cost.sh. Single calls' costs: floor.sh.
#
#   sudo examples/connect-cost/udp_floor.sh        (N=3000 ROUNDS=7 by default)
set -euo pipefail
[ "${1:-}" = "--inside" ] || exec unshare -n "$0" --inside "$@"
dir=$(cd "$(dirname "$0")" && pwd)
bin=$(mktemp -d)/udp_floor
gcc -O2 -o "$bin" "$dir/udp_floor.c"
. "$dir/peers.sh"
"$bin" 203.0.113.1 7001 198.51.100.10 40000 40511 "${N:-3000}" "${ROUNDS:-7}"
