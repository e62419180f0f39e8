# A UDP socket placed by another process sharing it (a fork child) is not the program's own
# bind: when this process connects it again, the 4-tuple must be checked like any placement.
# argv: HOST PORT_A PORT_B, the slice being ONE port. The parent makes `s`; a fork child connects
# `s` to A (placed on the slice's port) and exits. The parent connects a new socket `x` to B (the
# port shared with s, which talks to A), then connects `s` to B: left on its port unchecked, s
# would have x's 4-tuple and take x's replies. Prints `x ok PORT` / `x err ERRNO`,
# `s ok PORT` / `s err ERRNO`, then `x good` / `x lost` (x's datagram answered to x).
import os, socket, sys
host, pa, pb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
pid = os.fork()
if pid == 0:
    s.connect((host, pa))
    os._exit(0)
os.waitpid(pid, 0)
x = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for name, sock in (("x", x), ("s", s)):
    try:
        sock.connect((host, pb))
        print("%s ok %d" % (name, sock.getsockname()[1]), flush=True)
    except OSError as e:
        print("%s err %d" % (name, e.errno), flush=True)
x.settimeout(2)
x.send(b"x.0")
try:
    data = x.recv(65536)
    print("x good" if data.startswith(b"x.0|") else "x wrong %r" % data, flush=True)
except OSError:
    print("x lost", flush=True)
