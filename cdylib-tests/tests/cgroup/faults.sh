#!/bin/sh
# Faults of `portrange cgroup` and `portrange exec` (run by ns.sh): each prints
# "NAME: rc=RC lines=N FIRST-LINE"; at the end "left: ..." lists what remains pinned or created.
set -u
P=$PORTRANGE_BIN
S=198.51.100.10:45000-45009
err=$(mktemp)
G=$CGROUP2/portrange-faults-$$
mkdir "$G"
run() {
  name=$1; shift
  "$@" >/dev/null 2>"$err"; rc=$?
  echo "$name: rc=$rc lines=$(wc -l <"$err") $(head -n 1 "$err")"
}
run not-cgroup "$P" cgroup attach /tmp --slice $S
run ipv6-slice "$P" cgroup attach "$G" --slice '[2001:db8::1]:45000-45009'
"$P" cgroup attach "$G" --slice $S >/dev/null || echo "first attach failed"
run twice "$P" cgroup attach "$G" --slice $S
"$P" cgroup detach "$G" >/dev/null || echo "detach failed"
run detach-none "$P" cgroup detach "$G"
# Without CAP_BPF / CAP_SYS_ADMIN / CAP_PERFMON / CAP_NET_ADMIN: the static client is not run.
nocap="setpriv --inh-caps=-all --bounding-set=-bpf,-sys_admin,-perfmon,-net_admin --"
run no-bpf $nocap "$P" exec --slice $S -- "$CLIENT" tcp 203.0.113.1 7001:1
$nocap "$P" exec --allow-unplaced --slice $S -- "$CLIENT" tcp 203.0.113.1 7001:1 >/dev/null 2>"$err"
echo "no-bpf-allowed: rc=$? $(grep -o UNPLACED "$err" | head -n 1)"
rmdir "$G"
left="$(ls "$CGROUP2" | grep portrange- | tr '\n' ' ')$(ls "$PORTRANGE_BPFFS/portrange" 2>/dev/null | tr '\n' ' ')"
echo "left: ${left:-none}"
rm -f "$err"
