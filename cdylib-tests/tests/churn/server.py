# The server side of the churn tests, run in the server namespace without the shim.
# argv: IP MODE PORT [PORT...]. MODE `close`: close each connection when the client has closed
# it (the client closed first, so the client's end becomes TIME_WAIT); `hold`: keep every
# connection open after the client's FIN (the client's end becomes an orphaned FIN_WAIT2);
# `http`: as `close`, and answer each request with a keep-alive `200 ok` (the client closes).
# Prints `listening`, then `peer IP PORT LISTENER_PORT` per accepted connection, and
# `reset IP PORT` when a connection is reset by the client side. On each stdin line `check`,
# prints `state IP PORT N` for every held connection (tcpi_state: 8 = CLOSE_WAIT, healthy;
# 7 = CLOSE, reset by the client side) and then `checked`.
import selectors, socket, sys, threading

ip, mode, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]
sel = selectors.DefaultSelector()
for port in ports:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((ip, port))
    srv.listen(4096)
    sel.register(srv, selectors.EVENT_READ, "listen")
held = []
lock = threading.Lock()
print("listening", flush=True)


def commands():
    for line in sys.stdin:
        if line.strip() == "check":
            with lock:
                for c, a in held:
                    st = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
                    print("state %s %d %d" % (a[0], a[1], st), flush=True)
            print("checked", flush=True)


threading.Thread(target=commands, daemon=True).start()
while True:
    for key, _ in sel.select():
        if key.data == "listen":
            c, a = key.fileobj.accept()
            print("peer %s %d %d" % (a + (key.fileobj.getsockname()[1],)), flush=True)
            sel.register(c, selectors.EVENT_READ, a)
        else:
            c = key.fileobj
            try:
                d = c.recv(4096)
            except OSError:
                print("reset %s %d" % key.data, flush=True)
                d = b""
            if d and mode == "http" and b"\r\n\r\n" in d:
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n")
            if not d:
                sel.unregister(c)
                if mode == "hold":
                    with lock:
                        held.append((c, key.data))
                else:
                    c.close()
