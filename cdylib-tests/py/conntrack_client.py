# The program under the shim (argv: PROTO IP PORT N [TIMEOUT]): N flows one after the other,
# each on a new socket: TCP connect, send `c`, read to EOF (the server closes first), close;
# UDP connect, send, wait for the echo, close. Prints `RESULT PROTO IP PORT ok LOCAL-IP
# LOCAL-PORT` or `RESULT ... err ERRNO` (0: timed out) for each.
import socket, sys

proto, ip, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 5.0
for i in range(n):
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
        local = s.getsockname()
        if proto == "tcp":
            s.sendall(b"c")
            while s.recv(100):
                pass
        else:
            s.send(b"c")
            s.recv(100)
        print("RESULT %s %s %d ok %s %d" % (proto, ip, port, local[0], local[1]), flush=True)
    except socket.timeout:
        print("RESULT %s %s %d err 0" % (proto, ip, port), flush=True)
    except OSError as e:
        print("RESULT %s %s %d err %d" % (proto, ip, port, e.errno or 0), flush=True)
    s.close()
