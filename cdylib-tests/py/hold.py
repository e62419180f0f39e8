# Hold a known set of TCP flows for `portrange status` tests, then wait for stdin to close.
# argv: groups "PORT:OPEN:CLOSED" — OPEN connections to 127.0.0.1:PORT kept open, CLOSED more
# connections, all opened, then closed by this side (FIN_WAIT2 if the peer keeps its end open,
# TIME_WAIT once the peer closes too).
import socket
import sys

held = []
for group in sys.argv[1:]:
    port, n_open, n_closed = (int(x) for x in group.split(":"))
    for _ in range(n_open):
        held.append(socket.create_connection(("127.0.0.1", port)))
    # All open before any is closed: a connection made after an earlier one to the same peer
    # reached TIME_WAIT could take over its 4-tuple (an explicit bind reuses a TIME_WAIT at
    # once), leaving one TIME_WAIT where the test counts two.
    closing = [socket.create_connection(("127.0.0.1", port)) for _ in range(n_closed)]
    for s in closing:
        s.close()
print("READY", flush=True)
sys.stdin.read()
