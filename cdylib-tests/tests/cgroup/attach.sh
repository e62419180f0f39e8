#!/bin/sh
# `portrange cgroup attach|status|detach` on a group of the private cgroup v2 mount (run by
# ns.sh): three flows of a static client moved into the group, then one after detach.
set -u
P=$PORTRANGE_BIN
G=$CGROUP2/portrange-attach-$$
mkdir "$G"
trap 'rmdir "$G" 2>/dev/null' EXIT
"$P" cgroup attach "$G" --slice 198.51.100.10:44000-44009 || exit 1
G=$G sh -c 'echo $$ > "$G/cgroup.procs" && exec "$CLIENT" tcp 203.0.113.1 7001:3' || exit 1
"$P" cgroup status "$G" || exit 1
echo "all:"; "$P" cgroup status || exit 1
"$P" cgroup detach "$G" || exit 1
"$P" cgroup status "$G" || exit 1
"$P" cgroup status || exit 1
left=$(ls "$PORTRANGE_BPFFS/portrange" 2>/dev/null | tr '\n' ' ')
echo "pins after detach: ${left:-none}"
G=$G sh -c 'echo $$ > "$G/cgroup.procs" && exec "$CLIENT" tcp 203.0.113.1 7002:1' || exit 1
