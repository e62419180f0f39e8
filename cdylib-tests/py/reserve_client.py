# The program under the shim in the reservation test (argv: HOST PORT N GO_FILE): N TCP
# connections to HOST:PORT, held; then it creates GO_FILE.waiting and, once GO_FILE exists (10 s
# at most), makes one more. One `RESULT tcp HOST PORT ok LOCAL-IP LOCAL-PORT` /
# `RESULT ... err ERRNO` line per connect.
import os, socket, sys, time

host, port, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
held = []


def one():
    s = socket.socket()
    try:
        s.connect((host, port))
        print("RESULT tcp %s %d ok %s %d" % ((host, port) + s.getsockname()), flush=True)
        held.append(s)
    except OSError as e:
        print("RESULT tcp %s %d err %d" % (host, port, e.errno or 0), flush=True)
        s.close()


for i in range(n):
    one()
open(go + ".waiting", "w").close()
deadline = time.time() + 10
while not os.path.exists(go) and time.time() < deadline:
    time.sleep(0.01)
one()
