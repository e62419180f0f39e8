# The client side of the churn tests (run under the shim in the client namespace).
# argv: COMMAND HOST PORT [ARGS...]. Each connect prints `ok IP PORT`, `inprogress IP PORT MS`
# or `err ERRNO MS`.
#   loop N GAP_MS [bind IP [getsockname]]
#                             N times: socket, (bind((IP, 0)), (getsockname(),)) connect, close;
#                             GAP_MS apart (with getsockname: `reuse V`, the SO_REUSEADDR value
#                             the program reads after connect)
#   hold N                    N connects, kept open until stdin closes
#   burst N nonblock|block    N connects; close them all (the client closes first); at once N
#                             more, blocking or not; wait for the peer's FINs; `closed` line
#   orphans N                 N connects; close them; wait until /proc/net/tcp shows N orphaned
#                             FIN_WAIT2 (`fin_wait2 N`); then N more blocking connects
#   timewait N                N connects; close them; wait for N TIME_WAITs (`timewait N`);
#                             then N more blocking connects
import errno, os, socket, sys, time

cmd, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
args = sys.argv[4:]


def states(code):
    # Client-side sockets towards host:port in /proc/net/tcp state `code` (hex string).
    n = 0
    want = "%08X:%04X" % (int.from_bytes(socket.inet_aton(host), "little"), port)
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            w = line.split()
            if w[2] == want and w[3] == code:
                n += 1
    return n


def wait_states(code, n, timeout=5.0):
    deadline = time.time() + timeout
    while states(code) < n and time.time() < deadline:
        time.sleep(0.005)
    return states(code)


def connect(blocking=True, bind=None, name=False):
    s = socket.socket()
    if bind:
        s.bind((bind, 0))
    if name:
        s.getsockname()
    s.setblocking(blocking)
    t0 = time.monotonic()
    try:
        s.connect((host, port))
        print("ok %s %d" % s.getsockname(), flush=True)
        if name:
            print("reuse", s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), flush=True)
        return s
    except BlockingIOError:
        ms = (time.monotonic() - t0) * 1000
        print("inprogress %s %d %.1f" % (s.getsockname() + (ms,)), flush=True)
        return s
    except OSError as e:
        ms = (time.monotonic() - t0) * 1000
        print("err %d %.1f" % (e.errno or -1, ms), flush=True)
        s.close()
        return None


def batch(n, **kw):
    return [s for s in (connect(**kw) for _ in range(n)) if s]


if cmd == "loop":
    n, gap = int(args[0]), float(args[1]) / 1000
    bind = args[3] if len(args) > 3 and args[2] == "bind" else None
    name = len(args) > 4 and args[4] == "getsockname"
    for i in range(n):
        s = connect(bind=bind, name=name)
        if s:
            s.close()
        time.sleep(gap)
elif cmd == "hold":
    held = batch(int(args[0]))
    sys.stdin.read()
elif cmd == "burst":
    n, blocking = int(args[0]), args[1] == "block"
    first = batch(n)
    for s in first:
        s.close()
    second = batch(n, blocking=blocking)
    time.sleep(0.2)
    print("closed", flush=True)
elif cmd == "orphans":
    n = int(args[0])
    first = batch(n)
    for s in first:
        s.close()
    print("fin_wait2", wait_states("05", n), flush=True)
    second = batch(n)
elif cmd == "timewait":
    n = int(args[0])
    first = batch(n)
    for s in first:
        s.close()
    print("timewait", wait_states("06", n), flush=True)
    second = batch(n)
else:
    sys.exit("unknown command " + cmd)
