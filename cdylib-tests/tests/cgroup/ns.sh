#!/bin/sh
# Runs one cgroup-placement scenario in private namespaces (run under `unshare -m -n`):
# a private cgroup v2 mount and bpffs, the client IP 198.51.100.10 and the server IP 203.0.113.1
# on this namespace's lo, the recorder (`client serve`) on ports 7001-7003, then the command.
#   ns.sh SERVER_BIN SERVER_LOG CMD [ARGS...]
# The command's own output goes to stdout/stderr; the recorder's lines to SERVER_LOG.
set -u
server=$1 log=$2
shift 2
mount --make-rprivate /
work=$(mktemp -d /tmp/portrange-cgroup.XXXXXX)
mkdir "$work/cg" "$work/bpf"
mount -t cgroup2 none "$work/cg" || { echo "ns.sh: cannot mount cgroup2" >&2; exit 90; }
mount -t bpf bpf "$work/bpf" || { echo "ns.sh: cannot mount bpffs" >&2; exit 90; }
# The cgroup hierarchy is one for the whole machine: this scenario works in a group of its own.
cg="$work/cg/portrange-test-$$"
mkdir "$cg" || exit 90
export PORTRANGE_BPFFS="$work/bpf" PORTRANGE_CGROUP_ROOT="$cg" CGROUP2="$cg"
ip link set lo up
ip addr add 198.51.100.10/32 dev lo
ip addr add 203.0.113.1/32 dev lo
"$server" serve 203.0.113.1 7001 7002 7003 >"$log" 2>&1 &
spid=$!
i=0
until grep -q ready "$log" 2>/dev/null; do
  i=$((i + 1)); [ $i -gt 200 ] && { echo "ns.sh: recorder did not start" >&2; cat "$log" >&2; exit 91; }
  sleep 0.02
done
"$@"
rc=$?
sleep 0.1
kill $spid 2>/dev/null
wait $spid 2>/dev/null
# Anything a failed scenario left behind in the shared cgroup hierarchy.
for d in "$cg"/*/; do [ -d "$d" ] && rmdir "$d" 2>/dev/null; done
rmdir "$cg"
umount "$work/bpf" "$work/cg"
rm -rf "$work"
exit $rc
