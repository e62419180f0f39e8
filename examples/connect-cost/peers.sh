# Sourced by connect_cost.sh, floor.sh and udp_floor.sh inside their private network namespace:
# the slice IP 198.51.100.10 and the peer 203.0.113.1 on lo, a TCP peer on 203.0.113.1:7000 that
# accepts and closes, a UDP socket bound on 203.0.113.1:7001; both killed on exit. Returns once
# the TCP peer accepts (python starts slowly on a loaded machine).
ip link set lo up
ip addr add 198.51.100.10/32 dev lo
ip addr add 203.0.113.1/32 dev lo
python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("203.0.113.1", 7000)); s.listen(4096)
while True:
    c, _ = s.accept(); c.close()' &
tcp_pid=$!
python3 -c '
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("203.0.113.1", 7001)); time.sleep(1e6)' &
udp_pid=$!
trap 'kill $tcp_pid $udp_pid' EXIT
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/203.0.113.1/7000) 2>/dev/null && break
  sleep 0.1
done
