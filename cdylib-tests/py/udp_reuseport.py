# Issue 11: the program's own SO_REUSEPORT must be off while the shim binds a UDP socket it
# places (an SO_REUSEPORT bind succeeds over a holder with SO_REUSEPORT of the same user, even one
# without SO_REUSEADDR). argv: SLICE_IP PORT SERVER_IP SERVER_PORT, the slice being that one port.
# `h`: the program's own socket, SO_REUSEPORT=1, bound to SLICE_IP:PORT and connected to the
# server (left alone by the shim). `a`: SO_REUSEPORT=1 (no SO_REUSEADDR anywhere), connected to
# the same server: the slice's only port is h's, so it must fail (EAGAIN) — had it taken the
# port, it would have h's 4-tuple and h's replies. Prints `a ok IP PORT` / `a err ERRNO`, then
# `h good` / `h lost` (h's datagram answered to h).
import socket, sys
ip, port, sip, sport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
h = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
h.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
h.bind((ip, port))
h.connect((sip, sport))
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
try:
    a.connect((sip, sport))
    print("a ok %s %d" % a.getsockname(), flush=True)
except OSError as e:
    print("a err %d" % e.errno, flush=True)
h.settimeout(2)
h.send(b"h.0")
try:
    data = h.recv(65536)
    print("h good" if data.startswith(b"h.0|") else "h wrong %r" % data, flush=True)
except OSError:
    print("h lost", flush=True)
