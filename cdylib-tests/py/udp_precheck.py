# Issue 9 case 9: a 2-port slice with one port held for the peer, the other held for another
# peer (so no port is free for an exclusive bind: every connect goes on to the cookie check).
# Each new UDP socket, with an option outside the replay table set (UDP_GRO, as QUIC stacks do),
# connects to the first peer: it must get the other port every time. argv: rounds. Prints
# "held IP PORT", "other IP PORT", then per round "b IP PORT" or "b err ERRNO".
import socket, sys
UDP_GRO = 104
srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
srv.bind(("127.0.0.1", 0))
dst = srv.getsockname()
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
a.connect(dst)
print("held %s %d" % a.getsockname(), flush=True)
srv2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
srv2.bind(("127.0.0.1", 0))
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.connect(srv2.getsockname())
print("other %s %d" % c.getsockname(), flush=True)
for _ in range(int(sys.argv[1])):
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.setsockopt(socket.IPPROTO_UDP, UDP_GRO, 1)
    try:
        b.connect(dst)
        print("b %s %d" % b.getsockname(), flush=True)
    except OSError as e:
        print("b err %d" % e.errno, flush=True)
    b.close()
