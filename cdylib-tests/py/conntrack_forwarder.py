# The forwarder's flows (argv: IP PORT N): N TCP connections (held open) and N UDP flows
# (refreshed every 2 s) to the server, from this namespace; the client namespace SNATs them into
# the slice, so conntrack holds their 4-tuples there. Prints `ready` once all are up.
import socket, sys, time

ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
for i in range(n):
    s = socket.create_connection((ip, port), timeout=5)
    s.sendall(b"h")
    held.append(s)
udp = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((ip, port))
    s.settimeout(5)
    s.send(b"f")
    s.recv(10)
    udp.append(s)
print("ready", flush=True)
while True:
    time.sleep(2)
    for s in udp:
        s.send(b"r")
