# Issue 8 item 6: a client under a filter that denies AF_NETLINK.
# argv: HOST UDP_PORT_A UDP_PORT_B TCP_PORT N_UDP N_TCP
# N_UDP connected UDP sockets (alternating between two peers), each sends one datagram and is
# held; prints `udp ok PORT` or `udp err ERRNO PORT` (PORT: the socket's local port afterwards).
# Then the first held socket is closed and one more UDP connect is made (`again ...`).
# Then N_TCP TCP connections, held: `tcp ok PORT` / `tcp err ERRNO PORT`. Finally `netlink
# ERRNO` (0 if the program itself can open an AF_NETLINK socket).
import socket, sys

host, ua, ub, tp, n_udp, n_tcp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
held = []


def udp(i, key):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((host, ua if i % 2 == 0 else ub))
        s.send(b"u")
        print(key, "ok", s.getsockname()[1], flush=True)
        held.append(s)
    except OSError as e:
        print(key, "err", e.errno, s.getsockname()[1], flush=True)
        s.close()


for i in range(n_udp):
    udp(i, "udp")
if held:
    held.pop(0).close()
udp(0, "again")
for i in range(n_tcp):
    s = socket.socket()
    try:
        s.connect((host, tp))
        print("tcp ok", s.getsockname()[1], flush=True)
        held.append(s)
    except OSError as e:
        print("tcp err", e.errno, s.getsockname()[1], flush=True)
        s.close()
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4).close()
    print("netlink 0")
except OSError as e:
    print("netlink", e.errno)
