#!/bin/bash
# CPU cost per socket+connect+close, with and without the shim, for several builds of the library,
# interleaved in rounds, in a private network namespace (slice IP 198.51.100.10, peer
# 203.0.113.1, both on lo: non-loopback addresses). CPU time (user+sys of the client) is far less
# sensitive than wall time to other load on a shared machine. Needs root, gcc, python3.
#
#   sudo examples/connect-cost/connect_cost.sh NAME=/path/libportrange.so [NAME=/path/...]
#   (ROUNDS=5 N=3000 by default; prints the median per configuration)
set -euo pipefail
[ "${1:-}" = "--inside" ] || exec unshare -n "$0" --inside "$@"
shift
dir=$(cd "$(dirname "$0")" && pwd)
bin=$(mktemp -d)/connect_cost
gcc -O2 -o "$bin" "$dir/connect_cost.c"
. "$dir/peers.sh"
N=${N:-3000}
SLICE=198.51.100.10:40000-40511
out=$(mktemp)
for round in $(seq "${ROUNDS:-5}"); do
  for proto in tcp udp; do
    port=7000; [ $proto = udp ] && port=7001
    echo "$proto none $("$bin" $proto 203.0.113.1 $port "$N")" >>"$out"
    for lib in "$@"; do
      name=${lib%%=*}; so=${lib#*=}
      echo "$proto $name-inactive $(LD_PRELOAD=$so "$bin" $proto 203.0.113.1 $port "$N")" >>"$out"
      if [ $proto = tcp ]; then
        for st in kernel retry; do
          echo "$proto $name-$st $(LD_PRELOAD=$so PORTRANGE=$SLICE PORTRANGE_STRATEGY=$st "$bin" $proto 203.0.113.1 $port "$N")" >>"$out"
        done
      else
        echo "$proto $name-cookie $(LD_PRELOAD=$so PORTRANGE=$SLICE "$bin" $proto 203.0.113.1 $port "$N")" >>"$out"
      fi
    done
  done
done
python3 - "$out" <<'PY'
import collections, statistics, sys
d = collections.defaultdict(list)
for l in open(sys.argv[1]):
    w = l.split()
    d[(w[0], w[1])].append((float(w[2]), float(w[3]), int(w[4])))
print("%-4s %-24s %12s %12s %6s" % ("", "configuration", "CPU µs/conn", "wall µs/conn", "fails"))
for (proto, name), v in d.items():
    print("%-4s %-24s %12.2f %12.2f %6d" % (proto, name, statistics.median(x[0] for x in v),
                                            statistics.median(x[1] for x in v), sum(x[2] for x in v)))
PY
