# The server of the conntrack tests (argv: IP PORT). Prints `tcp IP PORT` for each accepted
# connection and `udp IP PORT` for each datagram, as the peer saw its source; `req IP PORT` when
# a TCP client's request arrives (its connect() returned success). A TCP client that
# sends `c` gets `ok` and the server closes first (so the client leaves no TIME_WAIT); one that
# sends `h` (the forwarder) is held open. Datagrams are echoed (`r`, a forwarder's refresh, is not
# printed).
import socket, sys, threading

ip, port = sys.argv[1], int(sys.argv[2])
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((ip, port))
t.listen(1024)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind((ip, port))
held = []
lock = threading.Lock()


def say(line):
    with lock:
        print(line, flush=True)


def serve(c):
    try:
        what = c.recv(1)
    except OSError:
        what = b""
    if what == b"h":
        held.append(c)
        return
    if what == b"c":
        # The client sends this once its connect() returned success.
        try:
            say("req %s %d" % c.getpeername())
        except OSError:
            pass
    try:
        c.sendall(b"ok")
    except OSError:
        pass
    c.close()


def tcp():
    while True:
        c, a = t.accept()
        say("tcp %s %d" % a)
        threading.Thread(target=serve, args=(c,), daemon=True).start()


threading.Thread(target=tcp, daemon=True).start()
say("listening")
while True:
    d, a = u.recvfrom(100)
    if d != b"r":  # the forwarder's refreshes are not new flows
        say("udp %s %d" % a)
    u.sendto(d, a)
