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
ip link set lo up
ip addr add 198.51.100.10/32 dev lo
ip addr add 203.0.113.1/32 dev lo
python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("203.0.113.1", 7000)); s.listen(4096)
while True:
    c, _ = s.accept(); c.close()' &
pid=$!
trap 'kill $pid' EXIT
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/203.0.113.1/7000) 2>/dev/null && break
  sleep 0.1
done
"$bin" 203.0.113.1 7000 198.51.100.10 40000 40511 "${N:-3000}" "${ROUNDS:-7}"
