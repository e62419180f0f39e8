/* The differential probe: numbered scenarios of socket calls, each step printed as
 *     S<nn> <label> = <return value> errno=<name>
 * with fd numbers and ports normalised, so that a run without the shim and a run with it can be
 * compared line by line (cdylib-tests/tests/differential.rs).
 *
 * Topology (set up by the test, in network namespaces of their own):
 *   client 198.51.100.10 / 2001:db8:a::10  --veth--  server 203.0.113.1 / 2001:db8:b::1
 * Scenario N talks to the server's echo listeners at TCP and UDP port 10000+N; port 30000+N has
 * no listener (refused); 203.0.113.99 never answers ARP (a connect there stays in progress).
 * Ports the program binds itself are 7000+N. Printed ports: those three ranges exactly, any
 * other non-zero port as `*`, port 0 as `0`.
 *
 * Every scenario runs in a forked child (a crash or a hang is reported, not fatal); exec
 * scenarios re-execute this binary with `--exec-child N FD`.
 *
 * Usage: probe [--deep LIB] [all | N...]        (LIB: the RTLD_DEEPBIND test library)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <netinet/udp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif
#ifndef IP_LOCAL_PORT_RANGE
#define IP_LOCAL_PORT_RANGE 51
#endif
#ifndef TCP_FASTOPEN_CONNECT
#define TCP_FASTOPEN_CONNECT 30
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#ifndef SO_RXQ_OVFL
#define SO_RXQ_OVFL 40
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef IP_RECVFRAGSIZE
#define IP_RECVFRAGSIZE 25
#endif

#define CLIENT4 "198.51.100.10"
#define SERVER4 "203.0.113.1"
#define SILENT4 "203.0.113.99"
#define CLIENT6 "2001:db8:a::10"
#define SERVER6 "2001:db8:b::1"
#define MAPPED4 "::ffff:203.0.113.1"

/* errno before each call: printed as `-` when the call left it alone. */
#define SENT EDOM

static int cur;
static char self_exe[4096];
static const char *deep_lib;

#define ECHO (10000 + cur)
#define CLOSED (30000 + cur)
#define OWN (7000 + cur)

static void say(const char *fmt, ...) {
    char buf[600];
    int n = snprintf(buf, sizeof buf, "S%02d ", cur);
    va_list ap;
    va_start(ap, fmt);
    n += vsnprintf(buf + n, sizeof buf - n, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 2) n = sizeof buf - 2;
    buf[n++] = '\n';
    ssize_t w = write(1, buf, n);
    (void)w;
}

static const char *ename(int e) {
    if (e == SENT) return "-";
    const char *s = strerrorname_np(e);
    return s ? s : "E?";
}

/* A call returning a number / a descriptor / a size: print it with errno. */
#define CALL(label, expr)                                                            \
    ({                                                                               \
        errno = SENT;                                                                \
        long r_ = (long)(expr);                                                      \
        int e_ = errno;                                                              \
        say("%s = %ld errno=%s", label, r_, ename(e_));                              \
        errno = e_;                                                                  \
        r_;                                                                          \
    })
#define FD(label, expr)                                                              \
    ({                                                                               \
        errno = SENT;                                                                \
        long r_ = (long)(expr);                                                      \
        int e_ = errno;                                                              \
        say("%s = %s errno=%s", label, r_ >= 0 ? "fd" : "-1", ename(e_));            \
        errno = e_;                                                                  \
        (int)r_;                                                                     \
    })

static const char *port_text(int port, char *b) {
    if (port == 0 || (port >= 7000 && port < 8000) || (port >= 10000 && port < 10200) ||
        (port >= 30000 && port < 30200))
        sprintf(b, "%d", port);
    else
        strcpy(b, "*");
    return b;
}

static const char *addr_text(const struct sockaddr_storage *ss, socklen_t len, char *out) {
    char ip[INET6_ADDRSTRLEN], p[8];
    if (len < sizeof(sa_family_t)) return strcpy(out, "(empty)");
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
        sprintf(out, "%s:%s", ip, port_text(ntohs(a->sin_port), p));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const void *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof ip);
        sprintf(out, "[%s]:%s", ip, port_text(ntohs(a->sin6_port), p));
    } else {
        sprintf(out, "family %d", ss->ss_family);
    }
    return out;
}

static void name_of(const char *label, int fd, int peer) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    memset(&ss, 0, sizeof ss);
    errno = SENT;
    int r = peer ? getpeername(fd, (void *)&ss, &len) : getsockname(fd, (void *)&ss, &len);
    int e = errno;
    char t[128];
    if (r == 0)
        say("%s = %s errno=%s", label, addr_text(&ss, len, t), ename(e));
    else
        say("%s = -1 errno=%s", label, ename(e));
}
#define LOCAL(fd) name_of("getsockname", fd, 0)
#define PEER(fd) name_of("getpeername", fd, 1)

static void opt(const char *label, int fd, int level, int name) {
    unsigned v = 0xdead;
    socklen_t len = sizeof v;
    errno = SENT;
    int r = getsockopt(fd, level, name, &v, &len);
    int e = errno;
    if (r == 0)
        say("getsockopt %s = %u errno=%s", label, v, ename(e));
    else
        say("getsockopt %s = -1 errno=%s", label, ename(e));
}

static int seti(int fd, int level, int name, int v) {
    return setsockopt(fd, level, name, &v, sizeof v);
}

static socklen_t sa4(struct sockaddr_storage *ss, const char *ip, int port) {
    struct sockaddr_in *a = (void *)ss;
    memset(ss, 0, sizeof *ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    inet_pton(AF_INET, ip, &a->sin_addr);
    return sizeof *a;
}

static socklen_t sa6(struct sockaddr_storage *ss, const char *ip, int port) {
    struct sockaddr_in6 *a = (void *)ss;
    memset(ss, 0, sizeof *ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    inet_pton(AF_INET6, ip, &a->sin6_addr);
    return sizeof *a;
}

#define SA(ss) ((struct sockaddr *)&(ss))

/* Wait up to `ms` for `fd` to be readable, then read once (non-blocking). */
static void rd_within(const char *label, int fd, int ms) {
    struct pollfd p = {fd, POLLIN, 0};
    poll(&p, 1, ms);
    char b[256];
    CALL(label, recv(fd, b, sizeof b, MSG_DONTWAIT));
}

/* An echo arrives within a millisecond on the veth; 500 ms is a generous bound. */
static void rd(const char *label, int fd) { rd_within(label, fd, 500); }

static void wait_out(int fd) {
    struct pollfd p = {fd, POLLOUT, 0};
    CALL("poll POLLOUT", poll(&p, 1, 2000));
    say("revents = %s%s%s", p.revents & POLLOUT ? "OUT" : "", p.revents & POLLERR ? "|ERR" : "",
        p.revents & POLLHUP ? "|HUP" : "");
}

static int tcp(int family) { return FD("socket", socket(family, SOCK_STREAM, 0)); }
static int udp(int family) { return FD("socket", socket(family, SOCK_DGRAM, 0)); }

static int connect4(int fd, const char *ip, int port) {
    struct sockaddr_storage ss;
    socklen_t l = sa4(&ss, ip, port);
    return CALL("connect", connect(fd, SA(ss), l));
}
static int connect6(int fd, const char *ip, int port) {
    struct sockaddr_storage ss;
    socklen_t l = sa6(&ss, ip, port);
    return CALL("connect", connect(fd, SA(ss), l));
}
static void unspec(int fd) {
    struct sockaddr a = {.sa_family = AF_UNSPEC};
    CALL("connect AF_UNSPEC", connect(fd, &a, sizeof a));
}
static void bind4(int fd, const char *ip, int port) {
    struct sockaddr_storage ss;
    socklen_t l = sa4(&ss, ip, port);
    CALL("bind", bind(fd, SA(ss), l));
}
static void bind6(int fd, const char *ip, int port) {
    struct sockaddr_storage ss;
    socklen_t l = sa6(&ss, ip, port);
    CALL("bind", bind(fd, SA(ss), l));
}
static void sendto4(int fd, const char *ip, int port) {
    struct sockaddr_storage ss;
    socklen_t l = sa4(&ss, ip, port);
    CALL("sendto", sendto(fd, "ping", 4, 0, SA(ss), l));
}
static void echo(int fd) {
    CALL("send", send(fd, "ping", 4, MSG_NOSIGNAL));
    rd("recv", fd);
}
static void flags_of(int fd) {
    int fl = fcntl(fd, F_GETFL), fdf = fcntl(fd, F_GETFD);
    say("O_NONBLOCK = %d FD_CLOEXEC = %d", !!(fl & O_NONBLOCK), !!(fdf & FD_CLOEXEC));
}
static void so_error(int fd) { opt("SO_ERROR", fd, SOL_SOCKET, SO_ERROR); }
static void the_three(int fd) {
    opt("SO_REUSEADDR", fd, SOL_SOCKET, SO_REUSEADDR);
    opt("IP_BIND_ADDRESS_NO_PORT", fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT);
    opt("IP_LOCAL_PORT_RANGE", fd, IPPROTO_IP, IP_LOCAL_PORT_RANGE);
}

/* Run the rest of a scenario in a re-executed copy of this program, with `fd` inherited. */
static void exec_child(int fd) {
    char n[16], f[16];
    snprintf(n, sizeof n, "%d", cur);
    snprintf(f, sizeof f, "%d", fd);
    pid_t pid = fork();
    if (pid == 0) {
        execl(self_exe, self_exe, "--exec-child", n, f, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    say("exec child exit = %d", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
}

/* ---------------------------------------------------------------------------------------- */
/* TCP: the basic calls                                                                     */

static void s_tcp_blocking(void) {
    int fd = tcp(AF_INET);
    connect4(fd, SERVER4, ECHO);
    LOCAL(fd);
    PEER(fd);
    echo(fd);
    flags_of(fd);
    CALL("close", close(fd));
}

static void s_tcp_nonblocking(void) {
    int fd = FD("socket NONBLOCK|CLOEXEC", socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    connect4(fd, SERVER4, ECHO);
    wait_out(fd);
    so_error(fd);
    LOCAL(fd);
    PEER(fd);
    flags_of(fd);
    echo(fd);
}

static void s_tcp_fionbio(void) {
    int fd = tcp(AF_INET);
    int one = 1;
    CALL("ioctl FIONBIO", ioctl(fd, FIONBIO, &one));
    CALL("fcntl F_SETFD FD_CLOEXEC", fcntl(fd, F_SETFD, FD_CLOEXEC));
    connect4(fd, SERVER4, ECHO);
    wait_out(fd);
    flags_of(fd);
    LOCAL(fd);
}

static void s_eisconn(void) {
    int fd = tcp(AF_INET);
    connect4(fd, SERVER4, ECHO);
    connect4(fd, SERVER4, ECHO);
    connect4(fd, SERVER4, CLOSED);
    LOCAL(fd);
}

static void s_ealready(void) {
    int fd = FD("socket NONBLOCK", socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0));
    connect4(fd, SILENT4, 80);
    connect4(fd, SILENT4, 80);
    connect4(fd, SERVER4, ECHO);
    LOCAL(fd);
    so_error(fd);
}

static void s_refused_blocking(void) {
    int fd = tcp(AF_INET);
    connect4(fd, SERVER4, CLOSED);
    LOCAL(fd);
    so_error(fd);
    connect4(fd, SERVER4, ECHO);
    LOCAL(fd);
    echo(fd);
}

static void s_refused_so_error(void) {
    int fd = FD("socket NONBLOCK", socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0));
    connect4(fd, SERVER4, CLOSED);
    wait_out(fd);
    so_error(fd);
    so_error(fd);
    connect4(fd, SERVER4, CLOSED);
}

static void s_port_zero(void) {
    int fd = tcp(AF_INET);
    connect4(fd, SERVER4, 0);
    LOCAL(fd);
    int u = udp(AF_INET);
    connect4(u, SERVER4, 0);
    LOCAL(u);
    CALL("send", send(u, "x", 1, 0));
}

static void s_unspecified_dst(void) {
    int fd = tcp(AF_INET);
    connect4(fd, "0.0.0.0", CLOSED);
    LOCAL(fd);
    int u = udp(AF_INET);
    connect4(u, "0.0.0.0", CLOSED);
    LOCAL(u);
}

static void s_short_long(void) {
    struct sockaddr_storage ss;
    int fd = tcp(AF_INET);
    sa4(&ss, SERVER4, ECHO);
    CALL("connect len 15", connect(fd, SA(ss), 15));
    CALL("connect len 2", connect(fd, SA(ss), 2));
    CALL("connect len 1", connect(fd, SA(ss), 1));
    CALL("connect len 0", connect(fd, SA(ss), 0));
    LOCAL(fd);
    CALL("connect len 128", connect(fd, SA(ss), sizeof ss));
    CALL("connect len 129", connect(fd, SA(ss), sizeof ss + 1));
    LOCAL(fd);
}

static void s_null_addr(void) {
    int fd = tcp(AF_INET);
    CALL("connect NULL 16", connect(fd, NULL, 16));
    CALL("connect NULL 0", connect(fd, NULL, 0));
    int u = udp(AF_INET);
    CALL("sendto NULL 16", sendto(u, "x", 1, 0, NULL, 16));
    CALL("sendto NULL 0", sendto(u, "x", 1, 0, NULL, 0));
    LOCAL(u);
    connect4(fd, SERVER4, ECHO);
    LOCAL(fd);
}

static void s_efault(void) {
    void *bad = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int fd = tcp(AF_INET);
    CALL("connect unreadable", connect(fd, bad, 16));
    int u = udp(AF_INET);
    CALL("sendto unreadable", sendto(u, "x", 1, 0, bad, 16));
    CALL("bind unreadable", bind(fd, bad, 16));
    connect4(fd, SERVER4, ECHO);
    LOCAL(fd);
}

static void s_v6_on_v4(void) {
    struct sockaddr_storage ss;
    socklen_t l = sa6(&ss, SERVER6, ECHO);
    int fd = tcp(AF_INET);
    CALL("connect AF_INET6 address", connect(fd, SA(ss), l));
    LOCAL(fd);
    int u = udp(AF_INET);
    CALL("connect AF_INET6 address", connect(u, SA(ss), l));
    CALL("sendto AF_INET6 address", sendto(u, "x", 1, 0, SA(ss), l));
    LOCAL(u);
}

static void s_v4_on_v6(void) {
    struct sockaddr_storage ss;
    socklen_t l = sa4(&ss, SERVER4, ECHO);
    int fd = tcp(AF_INET6);
    CALL("connect AF_INET address", connect(fd, SA(ss), l));
    LOCAL(fd);
    int u = udp(AF_INET6);
    CALL("sendto AF_INET address", sendto(u, "x", 1, 0, SA(ss), l));
    LOCAL(u);
}

static void s_unix_family(void) {
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    strcpy(un.sun_path, "/nonexistent");
    int fd = tcp(AF_INET);
    CALL("connect AF_UNIX address", connect(fd, (void *)&un, sizeof un));
    struct sockaddr x = {.sa_family = 12345};
    CALL("connect family 12345", connect(fd, &x, sizeof x));
    LOCAL(fd);
}

static void s_ebadf_enotsock(void) {
    struct sockaddr_storage ss;
    socklen_t l = sa4(&ss, SERVER4, ECHO);
    CALL("connect -1", connect(-1, SA(ss), l));
    CALL("connect 999", connect(999, SA(ss), l));
    int p[2];
    CALL("pipe", pipe(p));
    CALL("connect pipe", connect(p[0], SA(ss), l));
    CALL("sendto pipe", sendto(p[1], "x", 1, 0, SA(ss), l));
    CALL("bind pipe", bind(p[0], SA(ss), l));
    CALL("setsockopt pipe", seti(p[0], SOL_SOCKET, SO_REUSEADDR, 1));
    CALL("listen -1", listen(-1, 1));
    int fd = tcp(AF_INET);
    CALL("close", close(fd));
    CALL("connect closed fd", connect(fd, SA(ss), l));
}

static void s_after_shutdown(void) {
    int fd = tcp(AF_INET);
    CALL("shutdown unconnected", shutdown(fd, SHUT_RDWR));
    connect4(fd, SERVER4, ECHO);
    CALL("shutdown SHUT_WR", shutdown(fd, SHUT_WR));
    connect4(fd, SERVER4, ECHO);
    LOCAL(fd);
    rd("recv after shutdown", fd);
}

static void s_raw_and_unix(void) {
    int r = FD("socket AF_UNIX", socket(AF_UNIX, SOCK_STREAM, 0));
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    strcpy(un.sun_path, "/nonexistent/x");
    CALL("connect AF_UNIX", connect(r, (void *)&un, sizeof un));
    int ic = FD("socket ICMP", socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP));
    struct sockaddr_storage ss;
    socklen_t l = sa4(&ss, SERVER4, 0);
    CALL("connect ICMP", connect(ic, SA(ss), l));
    LOCAL(ic);
    int sc = FD("socket UDPLITE", socket(AF_INET, SOCK_DGRAM, IPPROTO_UDPLITE));
    connect4(sc, SERVER4, ECHO);
}

/* ---------------------------------------------------------------------------------------- */
/* Listeners and accepted sockets                                                           */

static void s_listener_own_port(void) {
    int l = tcp(AF_INET);
    CALL("setsockopt SO_REUSEADDR", seti(l, SOL_SOCKET, SO_REUSEADDR, 1));
    bind4(l, CLIENT4, OWN);
    CALL("listen", listen(l, 8));
    LOCAL(l);
    connect4(l, SERVER4, ECHO);
    opt("SO_ACCEPTCONN", l, SOL_SOCKET, SO_ACCEPTCONN);
}

static void s_listener_wildcard_connect(void) {
    /* issue 9 case 5: connect() on a listener bound to 0.0.0.0:0 */
    int l = tcp(AF_INET);
    bind4(l, "0.0.0.0", 0);
    CALL("listen", listen(l, 8));
    LOCAL(l);
    connect4(l, SERVER4, ECHO);
    opt("SO_ACCEPTCONN", l, SOL_SOCKET, SO_ACCEPTCONN);
    LOCAL(l);
    struct sockaddr_storage me;
    socklen_t ml = sizeof me;
    getsockname(l, SA(me), &ml);
    ((struct sockaddr_in *)&me)->sin_addr.s_addr = inet_addr(CLIENT4);
    int c = tcp(AF_INET);
    CALL("connect to the listener", connect(c, SA(me), ml));
    FD("accept", accept(l, NULL, NULL));
}

static void s_double_bind(void) {
    /* issue 9 case 5: a second bind after bind(0.0.0.0, 0) */
    int fd = tcp(AF_INET);
    bind4(fd, "0.0.0.0", 0);
    bind4(fd, "0.0.0.0", 0);
    bind4(fd, CLIENT4, 0);
    bind4(fd, "0.0.0.0", OWN);
    LOCAL(fd);
    int u = udp(AF_INET);
    bind4(u, "0.0.0.0", 0);
    bind4(u, CLIENT4, 0);
    LOCAL(u);
}

static void s_accepted(void) {
    int l = tcp(AF_INET);
    bind4(l, CLIENT4, OWN);
    CALL("listen", listen(l, 8));
    int c = tcp(AF_INET);
    connect4(c, CLIENT4, OWN);
    LOCAL(c);
    int a = FD("accept", accept(l, NULL, NULL));
    LOCAL(a);
    PEER(a);
    connect4(a, SERVER4, ECHO);
    opt("SO_REUSEADDR (accepted)", a, SOL_SOCKET, SO_REUSEADDR);
    CALL("send", send(a, "x", 1, 0));
    rd("recv", c);
}

static void s_listen_v6_dual(void) {
    int l = tcp(AF_INET6);
    CALL("setsockopt IPV6_V6ONLY 0", seti(l, IPPROTO_IPV6, IPV6_V6ONLY, 0));
    bind6(l, "::", 0);
    CALL("listen", listen(l, 8));
    LOCAL(l);
    struct sockaddr_storage me;
    socklen_t ml = sizeof me;
    getsockname(l, SA(me), &ml);
    int port = ntohs(((struct sockaddr_in6 *)&me)->sin6_port);
    int c = tcp(AF_INET);
    struct sockaddr_storage ss;
    socklen_t sl = sa4(&ss, CLIENT4, port);
    CALL("connect to the listener", connect(c, SA(ss), sl));
    int a = FD("accept", accept(l, NULL, NULL));
    LOCAL(a);
}

/* ---------------------------------------------------------------------------------------- */
/* Options the shim manages: read back                                                      */

static void s_readback_default(void) {
    int fd = tcp(AF_INET);
    the_three(fd);
    connect4(fd, SERVER4, ECHO);
    the_three(fd);
    int u = udp(AF_INET);
    connect4(u, SERVER4, ECHO);
    the_three(u);
}

static void s_readback_set(void) {
    int fd = tcp(AF_INET);
    CALL("setsockopt SO_REUSEADDR 1", seti(fd, SOL_SOCKET, SO_REUSEADDR, 1));
    CALL("setsockopt IP_BIND_ADDRESS_NO_PORT 1", seti(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1));
    the_three(fd);
    connect4(fd, SERVER4, ECHO);
    the_three(fd);
    CALL("setsockopt SO_REUSEADDR 0", seti(fd, SOL_SOCKET, SO_REUSEADDR, 0));
    the_three(fd);
}

static void s_readback_range(void) {
    int fd = tcp(AF_INET);
    unsigned range = (50010u << 16) | 50000u;
    CALL("setsockopt IP_LOCAL_PORT_RANGE", setsockopt(fd, IPPROTO_IP, IP_LOCAL_PORT_RANGE, &range, 4));
    the_three(fd);
    connect4(fd, SERVER4, ECHO);
    the_three(fd);
    unsigned bad = (1u << 16) | 2u;
    CALL("setsockopt IP_LOCAL_PORT_RANGE lo>hi", setsockopt(fd, IPPROTO_IP, IP_LOCAL_PORT_RANGE, &bad, 4));
    CALL("setsockopt IP_LOCAL_PORT_RANGE len 2", setsockopt(fd, IPPROTO_IP, IP_LOCAL_PORT_RANGE, &range, 2));
}

static void s_readback_short_len(void) {
    int fd = tcp(AF_INET);
    connect4(fd, SERVER4, ECHO);
    unsigned char v[8] = {0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa};
    socklen_t len = 1;
    CALL("getsockopt SO_REUSEADDR len 1", getsockopt(fd, SOL_SOCKET, SO_REUSEADDR, v, &len));
    say("value = %u %u len = %u", v[0], v[1], len);
    len = 8;
    CALL("getsockopt SO_REUSEADDR len 8", getsockopt(fd, SOL_SOCKET, SO_REUSEADDR, v, &len));
    say("value = %u len = %u", v[0], len);
    CALL("getsockopt SO_REUSEADDR NULL len", getsockopt(fd, SOL_SOCKET, SO_REUSEADDR, v, NULL));
}

static void s_reuseport_readback(void) {
    int u = udp(AF_INET);
    CALL("setsockopt SO_REUSEPORT 1", seti(u, SOL_SOCKET, SO_REUSEPORT, 1));
    sendto4(u, SERVER4, ECHO);
    opt("SO_REUSEPORT", u, SOL_SOCKET, SO_REUSEPORT);
    opt("SO_REUSEADDR", u, SOL_SOCKET, SO_REUSEADDR);
    rd("recv", u);
}

/* ---------------------------------------------------------------------------------------- */
/* Fast Open                                                                                 */

static void s_msg_fastopen(void) {
    int fd = tcp(AF_INET);
    struct sockaddr_storage ss;
    socklen_t l = sa4(&ss, SERVER4, ECHO);
    CALL("sendto MSG_FASTOPEN", sendto(fd, "ping", 4, MSG_FASTOPEN, SA(ss), l));
    LOCAL(fd);
    PEER(fd);
    rd("recv", fd);
    CALL("sendto MSG_FASTOPEN again", sendto(fd, "ping", 4, MSG_FASTOPEN, SA(ss), l));
}

static void s_fastopen_connect(void) {
    int fd = tcp(AF_INET);
    CALL("setsockopt TCP_FASTOPEN_CONNECT", seti(fd, IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1));
    connect4(fd, SERVER4, ECHO);
    LOCAL(fd);
    echo(fd);
    opt("TCP_FASTOPEN_CONNECT", fd, IPPROTO_TCP, TCP_FASTOPEN_CONNECT);
}

static void s_sendto_tcp_unconnected(void) {
    int fd = tcp(AF_INET);
    struct sockaddr_storage ss;
    socklen_t l = sa4(&ss, SERVER4, ECHO);
    CALL("sendto without MSG_FASTOPEN", sendto(fd, "x", 1, MSG_NOSIGNAL, SA(ss), l));
    LOCAL(fd);
    connect4(fd, SERVER4, ECHO);
    CALL("sendto on connected (address ignored)", sendto(fd, "ping", 4, 0, SA(ss), l));
    rd("recv", fd);
}

/* ---------------------------------------------------------------------------------------- */
/* IPv6, v4-mapped, V6ONLY                                                                   */

static void s_v6(void) {
    int fd = tcp(AF_INET6);
    connect6(fd, SERVER6, ECHO);
    LOCAL(fd);
    PEER(fd);
    echo(fd);
}

static void s_v4_mapped(void) {
    int fd = tcp(AF_INET6);
    connect6(fd, MAPPED4, ECHO);
    LOCAL(fd);
    PEER(fd);
    echo(fd);
}

static void s_v6only_mapped(void) {
    /* issue 9 case 6: ENETUNREACH */
    int fd = tcp(AF_INET6);
    CALL("setsockopt IPV6_V6ONLY 1", seti(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1));
    connect6(fd, MAPPED4, ECHO);
    LOCAL(fd);
    connect6(fd, SERVER6, ECHO);
    LOCAL(fd);
}

static void s_v6only_udp_mapped(void) {
    int u = udp(AF_INET6);
    CALL("setsockopt IPV6_V6ONLY 1", seti(u, IPPROTO_IPV6, IPV6_V6ONLY, 1));
    struct sockaddr_storage ss;
    socklen_t l = sa6(&ss, MAPPED4, ECHO);
    CALL("sendto v4-mapped", sendto(u, "x", 1, 0, SA(ss), l));
    connect6(u, MAPPED4, ECHO);
    LOCAL(u);
}

static void s_v6_dual_bound(void) {
    int fd = tcp(AF_INET6);
    CALL("setsockopt IPV6_V6ONLY 0", seti(fd, IPPROTO_IPV6, IPV6_V6ONLY, 0));
    bind6(fd, "::", 0);
    connect6(fd, MAPPED4, ECHO);
    LOCAL(fd);
    echo(fd);
}

static void s_v6_len24(void) {
    /* issue 9 case 2: sockaddr_in6 lengths 24-27 */
    struct sockaddr_storage ss;
    sa6(&ss, SERVER6, ECHO);
    int fd = tcp(AF_INET6);
    CALL("connect len 24", connect(fd, SA(ss), 24));
    LOCAL(fd);
    echo(fd);
    int g = tcp(AF_INET6);
    CALL("connect len 23", connect(g, SA(ss), 23));
}

static void s_v6_len27_udp(void) {
    struct sockaddr_storage ss;
    sa6(&ss, SERVER6, ECHO);
    int u = udp(AF_INET6);
    CALL("sendto len 27", sendto(u, "ping", 4, 0, SA(ss), 27));
    LOCAL(u);
    rd("recv", u);
    int c = udp(AF_INET6);
    CALL("connect len 26", connect(c, SA(ss), 26));
    CALL("send", send(c, "ping", 4, 0));
    LOCAL(c);
}

static void s_v6_mapped_len24(void) {
    struct sockaddr_storage ss;
    sa6(&ss, MAPPED4, ECHO);
    int fd = tcp(AF_INET6);
    CALL("connect v4-mapped len 25", connect(fd, SA(ss), 25));
    LOCAL(fd);
}

/* ---------------------------------------------------------------------------------------- */
/* Descriptors: 0-2 reused, dup, epoll                                                       */

static void s_fd_zero(void) {
    close(0);
    int fd = FD("socket", socket(AF_INET, SOCK_STREAM, 0));
    say("fd number = %d", fd);
    connect4(fd, SERVER4, ECHO);
    LOCAL(fd);
    echo(fd);
}

static void s_fd_two(void) {
    close(2);
    int u = FD("socket", socket(AF_INET, SOCK_DGRAM, 0));
    say("fd number = %d", u);
    connect4(u, SERVER4, ECHO);
    LOCAL(u);
    CALL("send", send(u, "ping", 4, 0));
    rd("recv", u);
    rd_within("recv (nothing else arrived)", u, 100);
    /* A second flow that the shim may log about (a bound-by-program one): never into fd 2. */
    int t = tcp(AF_INET);
    bind4(t, CLIENT4, OWN);
    connect4(t, SERVER4, ECHO);
    rd_within("recv on fd 2 (no log line)", u, 100);
}

static void s_epoll_before(void) {
    int ep = FD("epoll_create1", epoll_create1(EPOLL_CLOEXEC));
    int fd = FD("socket NONBLOCK", socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0));
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.u64 = 77};
    CALL("epoll_ctl ADD", epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev));
    connect4(fd, SERVER4, ECHO);
    struct epoll_event out[4];
    int n = CALL("epoll_wait", epoll_wait(ep, out, 4, 2000));
    for (int i = 0; i < n; i++) say("event data = %llu OUT = %d", (unsigned long long)out[i].data.u64, !!(out[i].events & EPOLLOUT));
    CALL("epoll_ctl MOD", epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev));
    LOCAL(fd);
}

static void s_epoll_after(void) {
    int ep = FD("epoll_create1", epoll_create1(0));
    int fd = FD("socket NONBLOCK", socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0));
    connect4(fd, SERVER4, ECHO);
    struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = 5};
    CALL("epoll_ctl ADD", epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev));
    struct epoll_event out[4];
    CALL("epoll_wait", epoll_wait(ep, out, 4, 2000));
    CALL("epoll_ctl DEL", epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL));
    CALL("epoll_ctl DEL again", epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL));
}

/* The shim replaces a socket whose wildcard bind was carried out (getsockname) before connect:
 * the scenarios below use that to reach its swap path. */
static void wildcard_then_name(int fd) {
    bind4(fd, "0.0.0.0", 0);
    LOCAL(fd);
}

static void s_swap_visible(void) {
    int fd = FD("socket NONBLOCK", socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    CALL("setsockopt TCP_NODELAY", seti(fd, IPPROTO_TCP, TCP_NODELAY, 1));
    wildcard_then_name(fd);
    connect4(fd, SERVER4, ECHO);
    wait_out(fd);
    LOCAL(fd);
    flags_of(fd);
    opt("TCP_NODELAY", fd, IPPROTO_TCP, TCP_NODELAY);
    echo(fd);
}

static void s_epoll_oneshot(void) {
    /* issue 9 case 8: a fired EPOLLONESHOT registration stays disarmed */
    int ep = FD("epoll_create1", epoll_create1(0));
    int fd = FD("socket NONBLOCK", socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0));
    wildcard_then_name(fd);
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLONESHOT, .data.u64 = 9};
    CALL("epoll_ctl ADD ONESHOT", epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev));
    struct epoll_event out[4];
    CALL("epoll_wait (fires)", epoll_wait(ep, out, 4, 1000));
    connect4(fd, SERVER4, ECHO);
    usleep(100000);
    CALL("epoll_wait (disarmed)", epoll_wait(ep, out, 4, 100));
}

static void s_epoll_dup_stale(void) {
    /* issue 9 case 8: an epoll set holding the old socket through a dup */
    int ep = FD("epoll_create1", epoll_create1(0));
    int fd = FD("socket NONBLOCK", socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0));
    wildcard_then_name(fd);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 3};
    CALL("epoll_ctl ADD", epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev));
    int d = FD("dup", dup(fd));
    connect4(fd, SERVER4, ECHO);
    usleep(100000);
    struct epoll_event out[4];
    int n = CALL("epoll_wait", epoll_wait(ep, out, 4, 100));
    for (int i = 0; i < n; i++) say("event %#x", out[i].events);
    (void)d;
}

static void s_fasync(void) {
    /* issue 9 case 8: O_ASYNC, F_SETOWN, F_SETSIG carried over a swap */
    signal(SIGIO, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    int fd = FD("socket NONBLOCK", socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0));
    CALL("fcntl F_SETOWN", fcntl(fd, F_SETOWN, getpid()) == 0);
    CALL("fcntl F_SETSIG", fcntl(fd, F_SETSIG, SIGUSR1));
    CALL("fcntl F_SETFL O_ASYNC", fcntl(fd, F_SETFL, O_NONBLOCK | O_ASYNC));
    wildcard_then_name(fd);
    connect4(fd, SERVER4, ECHO);
    wait_out(fd);
    CALL("F_GETOWN is mine", fcntl(fd, F_GETOWN) == getpid());
    CALL("F_GETSIG", fcntl(fd, F_GETSIG));
    CALL("O_ASYNC", !!(fcntl(fd, F_GETFL) & O_ASYNC));
}

static void s_dup_before_connect(void) {
    /* issue 9 case 7: the shim's own option values through a dup taken before connect */
    int fd = tcp(AF_INET);
    int d = FD("dup", dup(fd));
    connect4(fd, SERVER4, ECHO);
    the_three(d);
    LOCAL(d);
    int u = udp(AF_INET);
    int du = FD("dup", dup(u));
    connect4(u, SERVER4, ECHO);
    the_three(du);
}

static void s_dup_after_connect(void) {
    int fd = tcp(AF_INET);
    connect4(fd, SERVER4, ECHO);
    int d = FD("dup", dup(fd));
    int d2 = FD("fcntl F_DUPFD_CLOEXEC", fcntl(fd, F_DUPFD_CLOEXEC, 100));
    the_three(d);
    the_three(d2);
    LOCAL(d2);
    CALL("close original", close(fd));
    echo(d);
}

static void s_dup2_then_connect(void) {
    int fd = tcp(AF_INET);
    int t = FD("dup2 to 60", dup2(fd, 60));
    CALL("close original", close(fd));
    connect4(t, SERVER4, ECHO);
    LOCAL(t);
    the_three(t);
    int u = udp(AF_INET);
    CALL("dup3 over 60", dup3(u, 60, O_CLOEXEC));
    sendto4(60, SERVER4, ECHO);
    LOCAL(60);
    flags_of(60);
}

static void s_close_range(void) {
    int fd = tcp(AF_INET);
    int t = FD("dup2 to 70", dup2(fd, 70));
    CALL("close_range 70-80", close_range(70, 80, 0));
    int n = FD("socket", socket(AF_INET, SOCK_DGRAM, 0));
    int m = FD("dup2 to 70", dup2(n, 70));
    connect4(m, SERVER4, ECHO);
    LOCAL(m);
    the_three(m);
    (void)t;
}

/* ---------------------------------------------------------------------------------------- */
/* fork, exec, threads, signals                                                              */

static void s_fork_child_connects(void) {
    int fd = tcp(AF_INET);
    pid_t pid = fork();
    if (pid == 0) {
        connect4(fd, SERVER4, ECHO);
        LOCAL(fd);
        echo(fd);
        int g = tcp(AF_INET);
        connect4(g, SERVER4, ECHO);
        LOCAL(g);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    say("child exit = %d", WEXITSTATUS(st));
    LOCAL(fd);
    PEER(fd);
}

static void s_fork_after_connect(void) {
    int fd = tcp(AF_INET);
    connect4(fd, SERVER4, ECHO);
    pid_t pid = fork();
    if (pid == 0) {
        the_three(fd);
        LOCAL(fd);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    say("child exit = %d", WEXITSTATUS(st));
}

static void s_exec_connected(void) {
    /* issue 9 case 7: the shim's option values in an exec'd child */
    int fd = tcp(AF_INET);
    connect4(fd, SERVER4, ECHO);
    exec_child(fd);
}

static void s_exec_deferred(void) {
    /* issue 9 case 7: a deferred bind(0.0.0.0, 0) across exec */
    int fd = tcp(AF_INET);
    bind4(fd, "0.0.0.0", 0);
    exec_child(fd);
}

static void s_exec_unconnected(void) {
    int fd = tcp(AF_INET);
    CALL("setsockopt SO_KEEPALIVE", seti(fd, SOL_SOCKET, SO_KEEPALIVE, 1));
    exec_child(fd);
}

static void s_exec_udp(void) {
    int u = udp(AF_INET);
    connect4(u, SERVER4, ECHO);
    exec_child(u);
}

static void exec_continue(int fd) {
    /* Every exec scenario prints what the inherited socket shows, then finishes its flow. */
    LOCAL(fd);
    the_three(fd);
    opt("SO_KEEPALIVE", fd, SOL_SOCKET, SO_KEEPALIVE);
    int type = 0;
    socklen_t tl = sizeof type;
    getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl);
    struct sockaddr_storage ss;
    socklen_t pl = sizeof ss;
    if (getpeername(fd, SA(ss), &pl) != 0) connect4(fd, SERVER4, ECHO);
    LOCAL(fd);
    echo(fd);
}

/* Wait for a child started by posix_spawn / vfork and print how it ended. */
static void waited(pid_t pid) {
    int st = 0;
    waitpid(pid, &st, 0);
    say("exec child exit = %d", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
}

static void s_vfork_execlp(void) {
    /* issue 9 case 7 through vfork (the child shares this process's memory) and a variadic exec
     * whose arguments go past the six argument registers (on the stack) */
    int fd = tcp(AF_INET);
    bind4(fd, "0.0.0.0", 0);
    char n[16], f[16];
    snprintf(n, sizeof n, "%d", cur);
    snprintf(f, sizeof f, "%d", fd);
    pid_t pid = vfork();
    if (pid == 0) {
        execlp(self_exe, self_exe, "--exec-child", n, f, "a5", "a6", "a7", "a8", (char *)NULL);
        _exit(127);
    }
    waited(pid);
    LOCAL(fd);
}

static void s_posix_spawn(void) {
    /* issue 9 case 7 through posix_spawn (glibc execs the child internally), then posix_spawnp
     * handing a close-on-exec socket to the child with a dup2 file action */
    extern char **environ;
    int fd = tcp(AF_INET);
    bind4(fd, "0.0.0.0", 0);
    char n[16], f[16];
    snprintf(n, sizeof n, "%d", cur);
    snprintf(f, sizeof f, "%d", fd);
    char *argv[] = {self_exe, "--exec-child", n, f, NULL};
    pid_t pid;
    int r = posix_spawn(&pid, self_exe, NULL, NULL, argv, environ);
    if (r == 0) waited(pid); /* the child's lines come first: no interleaving */
    say("posix_spawn = %d", r);
    int g = FD("socket SOCK_CLOEXEC", socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    bind4(g, "0.0.0.0", 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, g, 100);
    snprintf(f, sizeof f, "%d", 100);
    r = posix_spawnp(&pid, self_exe, &fa, NULL, argv, environ);
    if (r == 0) waited(pid);
    say("posix_spawnp = %d", r);
    posix_spawn_file_actions_destroy(&fa);
}

static void s_exec_own_options(void) {
    /* issue 9 case 7 / issue 11: an exec'd child reads the program's own IP_LOCAL_PORT_RANGE
     * and IP_BIND_ADDRESS_NO_PORT: after a connect (the kernel strategy sets both), after
     * bind(SLICE_IP, 0) + connect, after bind(SLICE_IP, 0) + getsockname (the shim set NO_PORT
     * for the deferred port) */
    unsigned range = (50999u << 16) | 50000u;
    int fd = tcp(AF_INET);
    CALL("setsockopt IP_LOCAL_PORT_RANGE", setsockopt(fd, IPPROTO_IP, IP_LOCAL_PORT_RANGE, &range, sizeof range));
    connect4(fd, SERVER4, ECHO);
    the_three(fd);
    exec_child(fd);
    int g = tcp(AF_INET);
    bind4(g, CLIENT4, 0);
    connect4(g, SERVER4, ECHO);
    the_three(g);
    exec_child(g);
    int h = tcp(AF_INET);
    bind4(h, CLIENT4, 0);
    LOCAL(h);
    the_three(h);
    exec_child(h);
}

static unsigned long long cookie_of(int fd) {
    unsigned long long c = 0;
    socklen_t l = sizeof c;
    getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c, &l);
    return c;
}

static void raw_name(const char *label, int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    memset(&ss, 0, sizeof ss);
    char t[128];
    if (syscall(SYS_getsockname, fd, &ss, &len) == 0)
        say("%s = %s", label, addr_text(&ss, len, t));
    else
        say("%s = -1 errno=%s", label, ename(errno));
}

static void s_exec_cloexec(void) {
    /* A close-on-exec socket does not reach the new program: its deferred bind(0.0.0.0, 0)
     * waits for this process's own connect (no port taken at exec, the socket is not replaced);
     * the socket the exec keeps is bound */
    int a = FD("socket SOCK_CLOEXEC", socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    bind4(a, "0.0.0.0", 0);
    int b = tcp(AF_INET);
    bind4(b, "0.0.0.0", 0);
    unsigned long long c0 = cookie_of(a);
    int c = tcp(AF_INET); /* kept by the exec too, unused by the child */
    bind4(c, "0.0.0.0", 0);
    exec_child(b);
    /* What the kernel holds, past the shim's getsockname (which would carry a deferred bind
     * out): `a` has no port yet, `b` has one. */
    raw_name("raw getsockname", a);
    raw_name("raw getsockname", b);
    connect4(a, SERVER4, ECHO);
    say("same socket across connect = %d", cookie_of(a) == c0);
    LOCAL(a);
    echo(a);
    /* `c` was bound for the exec by the child's side (another process): its flow from here */
    connect4(c, SERVER4, ECHO);
    LOCAL(c);
    echo(c);
}

static void s_system_popen(void) {
    /* issue 9 case 7 through system() and popen() (glibc spawns the shell internally) */
    char cmd[4300];
    int fd = tcp(AF_INET);
    bind4(fd, "0.0.0.0", 0);
    snprintf(cmd, sizeof cmd, "exec '%s' --exec-child %d %d", self_exe, cur, fd);
    int st = system(cmd);
    say("system = %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    int u = udp(AF_INET);
    bind4(u, "0.0.0.0", 0);
    snprintf(cmd, sizeof cmd, "exec '%s' --exec-child %d %d", self_exe, cur, u);
    FILE *p = popen(cmd, "r");
    if (!p) {
        say("popen = NULL errno=%s", ename(errno));
        return;
    }
    char buf[4096];
    size_t k;
    while ((k = fread(buf, 1, sizeof buf, p)) > 0) {
        ssize_t w = write(1, buf, k);
        (void)w;
    }
    st = pclose(p);
    say("pclose = %d", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

struct th {
    int i;
    char local[128];
    long r;
    int e;
};

static void *thread_main(void *p) {
    struct th *t = p;
    int fd = socket(t->i % 2 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    struct sockaddr_storage ss;
    socklen_t l = t->i % 2 ? sa6(&ss, MAPPED4, ECHO) : sa4(&ss, SERVER4, ECHO);
    errno = SENT;
    t->r = connect(fd, SA(ss), l);
    t->e = errno;
    struct sockaddr_storage me;
    socklen_t ml = sizeof me;
    getsockname(fd, SA(me), &ml);
    addr_text(&me, ml, t->local);
    return NULL;
}

static void s_threads(void) {
    pthread_t ids[8];
    struct th t[8];
    for (int i = 0; i < 8; i++) {
        t[i].i = i;
        pthread_create(&ids[i], NULL, thread_main, &t[i]);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(ids[i], NULL);
        say("thread %d connect = %ld errno=%s local = %s", i, t[i].r, ename(t[i].e), t[i].local);
    }
}

static void on_alarm(int s) { (void)s; }

static void s_eintr(void) {
    struct sigaction sa = {.sa_handler = on_alarm};
    sigaction(SIGALRM, &sa, NULL); /* no SA_RESTART */
    int fd = tcp(AF_INET);
    ualarm(100000, 0);
    connect4(fd, SILENT4, 80);
    CALL("fcntl F_SETFL O_NONBLOCK", fcntl(fd, F_SETFL, O_NONBLOCK));
    connect4(fd, SILENT4, 80);
    LOCAL(fd);
    int g = tcp(AF_INET);
    connect4(g, SERVER4, ECHO);
    LOCAL(g);
}

/* ---------------------------------------------------------------------------------------- */
/* UDP                                                                                       */

static void s_udp_connect(void) {
    int u = udp(AF_INET);
    connect4(u, SERVER4, ECHO);
    LOCAL(u);
    PEER(u);
    echo(u);
    CALL("write", write(u, "ping", 4));
    rd("read", u);
}

static void s_udp_sendto(void) {
    int u = udp(AF_INET);
    sendto4(u, SERVER4, ECHO);
    LOCAL(u);
    rd("recvfrom", u);
    sendto4(u, SERVER4, ECHO);
    LOCAL(u);
    PEER(u);
}

static void s_udp_sendmsg(void) {
    int u = udp(AF_INET);
    struct sockaddr_storage ss;
    socklen_t l = sa4(&ss, SERVER4, ECHO);
    struct iovec iov = {"ping", 4};
    struct msghdr m = {.msg_name = &ss, .msg_namelen = l, .msg_iov = &iov, .msg_iovlen = 1};
    CALL("sendmsg", sendmsg(u, &m, 0));
    LOCAL(u);
    rd("recv", u);
}

static void s_udp_sendmmsg(void) {
    int u = udp(AF_INET);
    struct sockaddr_storage ss;
    socklen_t l = sa4(&ss, SERVER4, ECHO);
    struct iovec iov = {"ping", 4};
    struct mmsghdr mm[2];
    memset(mm, 0, sizeof mm);
    for (int i = 0; i < 2; i++) {
        mm[i].msg_hdr.msg_name = &ss;
        mm[i].msg_hdr.msg_namelen = l;
        mm[i].msg_hdr.msg_iov = &iov;
        mm[i].msg_hdr.msg_iovlen = 1;
    }
    CALL("sendmmsg", sendmmsg(u, mm, 2, 0));
    LOCAL(u);
    rd("recv", u);
    rd("recv", u);
}

static void s_udp_unspec(void) {
    int u = udp(AF_INET);
    connect4(u, SERVER4, ECHO);
    LOCAL(u);
    unspec(u);
    LOCAL(u);
    PEER(u);
    sendto4(u, SERVER4, ECHO);
    LOCAL(u);
    rd("recv", u);
}

static void s_udp_unspec_queued(void) {
    /* issue 9 case 4: datagrams already queued survive a disconnect */
    int u = udp(AF_INET);
    connect4(u, SERVER4, ECHO);
    CALL("send", send(u, "ping", 4, 0));
    struct pollfd p = {u, POLLIN, 0};
    CALL("poll POLLIN", poll(&p, 1, 2000));
    unspec(u);
    CALL("recv queued", recv(u, (char[8]){0}, 8, MSG_DONTWAIT));
}

static void s_udp_unspec_pinned(void) {
    /* issue 9 case 4: the program's bind(SLICE_IP, 0) survives a disconnect */
    int u = udp(AF_INET);
    bind4(u, CLIENT4, 0);
    LOCAL(u);
    connect4(u, SERVER4, ECHO);
    unspec(u);
    LOCAL(u);
    sendto4(u, SERVER4, ECHO);
    rd("recv", u);
}

static void s_udp_reconnect(void) {
    int u = udp(AF_INET);
    connect4(u, SERVER4, ECHO);
    connect4(u, SERVER4, ECHO + 100);
    LOCAL(u);
    PEER(u);
    connect4(u, SERVER4, ECHO);
    echo(u);
}

static void s_udp_send_unbound(void) {
    /* issue 9 case 1: send() without an address autobinds, then the shim left the socket alone */
    int u = udp(AF_INET);
    CALL("send (no address)", send(u, "x", 1, 0));
    LOCAL(u);
    sendto4(u, SERVER4, ECHO);
    rd("recv", u);
}

static void s_udp_write_unbound(void) {
    /* issue 9 case 1: write() */
    int u = udp(AF_INET);
    CALL("write (no address)", write(u, "x", 1));
    connect4(u, SERVER4, ECHO);
    LOCAL(u);
    echo(u);
}

static void s_udp_sendmsg_unbound(void) {
    /* issue 9 case 1: sendmsg() without msg_name */
    int u = udp(AF_INET);
    struct iovec iov = {"x", 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    CALL("sendmsg (no address)", sendmsg(u, &m, 0));
    sendto4(u, SERVER4, ECHO);
    LOCAL(u);
    rd("recv", u);
}

static void s_udp_badlen_connect(void) {
    /* issue 9 case 1: a connect with a bad length */
    int u = udp(AF_INET);
    struct sockaddr_storage ss;
    sa4(&ss, SERVER4, ECHO);
    CALL("connect len 8", connect(u, SA(ss), 8));
    /* No getsockname here: whether the kernel autobinds before refusing the length depends on
     * whether a cgroup BPF connect program is attached (udp_pre_connect checks the length
     * first); the capture checks the next flow either way. */
    connect4(u, SERVER4, ECHO);
    echo(u);
}

static void s_udp_badlen_sendto(void) {
    int u = udp(AF_INET6);
    struct sockaddr_storage ss;
    sa6(&ss, SERVER6, ECHO);
    CALL("sendto len 20", sendto(u, "x", 1, 0, SA(ss), 20));
    LOCAL(u);
    CALL("sendto", sendto(u, "ping", 4, 0, SA(ss), sizeof(struct sockaddr_in6)));
    rd("recv", u);
}

static void s_udp_gro_swap(void) {
    /* issue 9 case 9: a UDP placement on a fresh socket with UDP_GRO set */
    int u = udp(AF_INET);
    CALL("setsockopt UDP_GRO", seti(u, IPPROTO_UDP, UDP_GRO, 1));
    wildcard_then_name(u);
    connect4(u, SERVER4, ECHO);
    echo(u);
    opt("UDP_GRO", u, IPPROTO_UDP, UDP_GRO);
}

static void s_udp_rxq_ovfl_swap(void) {
    int u = udp(AF_INET);
    CALL("setsockopt SO_RXQ_OVFL", seti(u, SOL_SOCKET, SO_RXQ_OVFL, 1));
    wildcard_then_name(u);
    connect4(u, SERVER4, ECHO);
    echo(u);
    opt("SO_RXQ_OVFL", u, SOL_SOCKET, SO_RXQ_OVFL);
}

static void s_udp_quic_opts_swap(void) {
    /* issue 9 case 9, "carry every option the kernel lets you read back": five options outside
     * the first replay table, as a QUIC stack sets them, then a placement on a fresh socket */
    int u = udp(AF_INET);
    CALL("setsockopt UDP_GRO", seti(u, IPPROTO_UDP, UDP_GRO, 1));
    CALL("setsockopt UDP_SEGMENT", seti(u, IPPROTO_UDP, UDP_SEGMENT, 1200));
    CALL("setsockopt SO_RXQ_OVFL", seti(u, SOL_SOCKET, SO_RXQ_OVFL, 1));
    CALL("setsockopt IP_RECVORIGDSTADDR", seti(u, IPPROTO_IP, IP_RECVORIGDSTADDR, 1));
    CALL("setsockopt IP_RECVFRAGSIZE", seti(u, IPPROTO_IP, IP_RECVFRAGSIZE, 1));
    wildcard_then_name(u);
    connect4(u, SERVER4, ECHO);
    echo(u);
    opt("UDP_GRO", u, IPPROTO_UDP, UDP_GRO);
    opt("UDP_SEGMENT", u, IPPROTO_UDP, UDP_SEGMENT);
    opt("SO_RXQ_OVFL", u, SOL_SOCKET, SO_RXQ_OVFL);
    opt("IP_RECVORIGDSTADDR", u, IPPROTO_IP, IP_RECVORIGDSTADDR);
    opt("IP_RECVFRAGSIZE", u, IPPROTO_IP, IP_RECVFRAGSIZE);
}

static void s_udp_v6(void) {
    int u = udp(AF_INET6);
    connect6(u, SERVER6, ECHO);
    LOCAL(u);
    echo(u);
    int s = udp(AF_INET6);
    struct sockaddr_storage ss;
    socklen_t l = sa6(&ss, SERVER6, ECHO);
    CALL("sendto", sendto(s, "ping", 4, 0, SA(ss), l));
    LOCAL(s);
    rd("recv", s);
}

static void s_udp_mapped(void) {
    int u = udp(AF_INET6);
    struct sockaddr_storage ss;
    socklen_t l = sa6(&ss, MAPPED4, ECHO);
    CALL("sendto v4-mapped", sendto(u, "ping", 4, 0, SA(ss), l));
    LOCAL(u);
    rd("recv", u);
    connect6(u, MAPPED4, ECHO);
    echo(u);
}

static void s_udp_wildcard_deferred(void) {
    int u = udp(AF_INET);
    bind4(u, "0.0.0.0", 0);
    connect4(u, SERVER4, ECHO);
    LOCAL(u);
    echo(u);
    int s = udp(AF_INET);
    bind4(s, "0.0.0.0", 0);
    sendto4(s, SERVER4, ECHO);
    LOCAL(s);
    rd("recv", s);
}

static void s_udp_own_port(void) {
    int u = udp(AF_INET);
    bind4(u, "0.0.0.0", OWN);
    sendto4(u, SERVER4, ECHO);
    LOCAL(u);
    rd("recv", u);
}

static void s_udp_refused(void) {
    int u = udp(AF_INET);
    connect4(u, SERVER4, CLOSED);
    CALL("send", send(u, "x", 1, 0));
    usleep(100000);
    CALL("send (ICMP error)", send(u, "x", 1, 0));
    so_error(u);
    LOCAL(u);
}

/* ---------------------------------------------------------------------------------------- */
/* Binds by the program                                                                      */

static void s_bind_slice_ip_no_port(void) {
    int fd = FD("socket NONBLOCK", socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0));
    CALL("setsockopt IP_BIND_ADDRESS_NO_PORT 1", seti(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1));
    bind4(fd, CLIENT4, 0);
    LOCAL(fd);
    connect4(fd, SERVER4, ECHO);
    wait_out(fd);
    LOCAL(fd);
    the_three(fd);
}

static void s_bind_slice_ip(void) {
    int fd = tcp(AF_INET);
    bind4(fd, CLIENT4, 0);
    LOCAL(fd);
    connect4(fd, SERVER4, ECHO);
    LOCAL(fd);
    the_three(fd);
    echo(fd);
}

static void s_bind_wildcard_connect(void) {
    int fd = tcp(AF_INET);
    bind4(fd, "0.0.0.0", 0);
    connect4(fd, SERVER4, ECHO);
    LOCAL(fd);
    echo(fd);
}

static void s_bind_wildcard_name_connect(void) {
    int fd = tcp(AF_INET);
    bind4(fd, "0.0.0.0", 0);
    struct sockaddr_in a;
    socklen_t l = sizeof a;
    getsockname(fd, (void *)&a, &l);
    int before = ntohs(a.sin_port);
    say("port before connect is set = %d", before != 0);
    connect4(fd, SERVER4, ECHO);
    l = sizeof a;
    getsockname(fd, (void *)&a, &l);
    say("port kept across connect = %d", ntohs(a.sin_port) == before);
    LOCAL(fd);
    echo(fd);
}

static void s_bind_own_port(void) {
    int fd = tcp(AF_INET);
    CALL("setsockopt SO_REUSEADDR", seti(fd, SOL_SOCKET, SO_REUSEADDR, 1));
    bind4(fd, "0.0.0.0", OWN);
    connect4(fd, SERVER4, ECHO);
    LOCAL(fd);
    echo(fd);
}

static void s_bind_other_ip(void) {
    int fd = tcp(AF_INET);
    bind4(fd, "127.0.0.1", 0);
    LOCAL(fd);
    connect4(fd, SERVER4, ECHO);
    LOCAL(fd);
    int g = tcp(AF_INET);
    bind4(g, "192.0.2.1", 0);
}

static void s_tcp_unspec(void) {
    int fd = tcp(AF_INET);
    unspec(fd);
    connect4(fd, SERVER4, ECHO);
    unspec(fd);
    LOCAL(fd);
    PEER(fd);
    connect4(fd, SERVER4, ECHO);
    LOCAL(fd);
}

static void s_skip_loopback(void) {
    int l = tcp(AF_INET);
    bind4(l, "127.0.0.1", OWN);
    CALL("listen", listen(l, 4));
    int fd = tcp(AF_INET);
    connect4(fd, "127.0.0.1", OWN);
    LOCAL(fd);
    the_three(fd);
}

/* ---------------------------------------------------------------------------------------- */
/* RTLD_DEEPBIND                                                                             */

typedef int (*deep_connect_fn)(int, const struct sockaddr *, socklen_t);
typedef long (*deep_sendto_fn)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);

static void *open_deep(int flags) {
    void *h = dlopen(deep_lib, flags);
    say("dlopen = %s", h ? "handle" : "NULL");
    return h;
}

static void s_deepbind_tcp(void) {
    /* issue 9 case 3: a library opened with RTLD_DEEPBIND */
    void *h = open_deep(RTLD_NOW | RTLD_DEEPBIND);
    if (!h) return;
    deep_connect_fn f = (deep_connect_fn)dlsym(h, "deep_connect");
    int fd = tcp(AF_INET);
    struct sockaddr_storage ss;
    socklen_t l = sa4(&ss, SERVER4, ECHO);
    CALL("deep_connect", f(fd, SA(ss), l));
    LOCAL(fd);
    echo(fd);
}

static void s_deepbind_udp(void) {
    void *h = open_deep(RTLD_LAZY | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!h) return;
    deep_sendto_fn f = (deep_sendto_fn)dlsym(h, "deep_sendto");
    int u = udp(AF_INET);
    struct sockaddr_storage ss;
    socklen_t l = sa4(&ss, SERVER4, ECHO);
    CALL("deep_sendto", f(u, "ping", 4, 0, SA(ss), l));
    LOCAL(u);
    rd("recv", u);
}

static void s_dlopen_plain(void) {
    void *h = open_deep(RTLD_NOW);
    if (!h) return;
    deep_connect_fn f = (deep_connect_fn)dlsym(h, "deep_connect");
    int fd = tcp(AF_INET);
    struct sockaddr_storage ss;
    socklen_t l = sa4(&ss, SERVER4, ECHO);
    CALL("deep_connect", f(fd, SA(ss), l));
    LOCAL(fd);
}

static void s_dlmopen_deepbind(void) {
    void *h = dlmopen(LM_ID_BASE, deep_lib, RTLD_NOW | RTLD_DEEPBIND);
    say("dlmopen = %s", h ? "handle" : "NULL");
    if (!h) return;
    deep_connect_fn f = (deep_connect_fn)dlsym(h, "deep_connect");
    int fd = tcp(AF_INET6);
    struct sockaddr_storage ss;
    socklen_t l = sa6(&ss, SERVER6, ECHO);
    CALL("deep_connect", f(fd, SA(ss), l));
    LOCAL(fd);
}

static void s_efault_msghdr(void) {
    void *bad = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int u = udp(AF_INET);
    CALL("sendmsg unreadable msghdr", sendmsg(u, bad, 0));
    CALL("sendmmsg unreadable mmsghdr", sendmmsg(u, bad, 1, 0));
    sendto4(u, SERVER4, ECHO);
    rd("recv", u);
}

/* ---------------------------------------------------------------------------------------- */

struct scenario {
    const char *name;
    void (*run)(void);
};

/* The number of a scenario is its position (1-based); append only, never reorder. */
static const struct scenario SCENARIOS[] = {
    {"tcp blocking connect, echo", s_tcp_blocking},
    {"tcp non-blocking connect (SOCK_NONBLOCK), SO_ERROR", s_tcp_nonblocking},
    {"tcp non-blocking via FIONBIO, FD_CLOEXEC kept", s_tcp_fionbio},
    {"EISCONN", s_eisconn},
    {"EALREADY", s_ealready},
    {"ECONNREFUSED blocking, then connect again", s_refused_blocking},
    {"ECONNREFUSED via SO_ERROR", s_refused_so_error},
    {"connect to port 0 (tcp, udp)", s_port_zero},
    {"connect to 0.0.0.0", s_unspecified_dst},
    {"short and long address lengths", s_short_long},
    {"NULL address", s_null_addr},
    {"unreadable address: EFAULT", s_efault},
    {"AF_INET6 address on AF_INET socket: EAFNOSUPPORT", s_v6_on_v4},
    {"AF_INET address on AF_INET6 socket", s_v4_on_v6},
    {"AF_UNIX / unknown family on a TCP socket", s_unix_family},
    {"EBADF and ENOTSOCK", s_ebadf_enotsock},
    {"connect after shutdown", s_after_shutdown},
    {"AF_UNIX, ICMP, UDP-Lite are passed through", s_raw_and_unix},
    {"listener on the program's port, connect on it", s_listener_own_port},
    {"bind(0.0.0.0, 0) + listen + connect on the listener", s_listener_wildcard_connect},
    {"a second bind after bind(0.0.0.0, 0)", s_double_bind},
    {"accept()ed sockets", s_accepted},
    {"dual-stack listener, accept", s_listen_v6_dual},
    {"read-back of the managed options, defaults", s_readback_default},
    {"read-back of SO_REUSEADDR / IP_BIND_ADDRESS_NO_PORT set by the program", s_readback_set},
    {"read-back of IP_LOCAL_PORT_RANGE set by the program", s_readback_range},
    {"read-back with short and long optlen", s_readback_short_len},
    {"SO_REUSEPORT read-back on a placed UDP socket", s_reuseport_readback},
    {"sendto MSG_FASTOPEN", s_msg_fastopen},
    {"TCP_FASTOPEN_CONNECT", s_fastopen_connect},
    {"sendto on a TCP socket without MSG_FASTOPEN", s_sendto_tcp_unconnected},
    {"IPv6 connect", s_v6},
    {"v4-mapped connect on AF_INET6", s_v4_mapped},
    {"IPV6_V6ONLY + v4-mapped: ENETUNREACH", s_v6only_mapped},
    {"IPV6_V6ONLY UDP + v4-mapped", s_v6only_udp_mapped},
    {"dual-stack socket bound to [::]:0, v4-mapped connect", s_v6_dual_bound},
    {"sockaddr_in6 of 24 bytes (tcp)", s_v6_len24},
    {"sockaddr_in6 of 26/27 bytes (udp)", s_v6_len27_udp},
    {"v4-mapped sockaddr_in6 of 25 bytes", s_v6_mapped_len24},
    {"fd 0 reused as a socket", s_fd_zero},
    {"fd 2 reused as a socket", s_fd_two},
    {"epoll registration before connect", s_epoll_before},
    {"epoll registration after connect", s_epoll_after},
    {"a socket the shim must replace: what the fd shows", s_swap_visible},
    {"EPOLLONESHOT fired before connect stays disarmed", s_epoll_oneshot},
    {"epoll set holding the old socket through a dup", s_epoll_dup_stale},
    {"O_ASYNC, F_SETOWN, F_SETSIG across connect", s_fasync},
    {"dup taken before connect: option read-back", s_dup_before_connect},
    {"dup taken after connect, F_DUPFD_CLOEXEC", s_dup_after_connect},
    {"dup2/dup3 onto a number, then connect/sendto", s_dup2_then_connect},
    {"close_range, then a new socket on the number", s_close_range},
    {"fork: the child connects", s_fork_child_connects},
    {"fork after connect: the child reads options", s_fork_after_connect},
    {"exec after connect: the child reads options", s_exec_connected},
    {"exec after bind(0.0.0.0, 0)", s_exec_deferred},
    {"exec before connect: the child connects", s_exec_unconnected},
    {"exec of a connected UDP socket", s_exec_udp},
    {"threads connecting at once", s_threads},
    {"signal interrupts a blocking connect: EINTR, then EALREADY", s_eintr},
    {"udp connect, send, write", s_udp_connect},
    {"udp sendto unconnected", s_udp_sendto},
    {"udp sendmsg unconnected", s_udp_sendmsg},
    {"udp sendmmsg unconnected", s_udp_sendmmsg},
    {"udp connect(AF_UNSPEC)", s_udp_unspec},
    {"udp connect(AF_UNSPEC) keeps queued datagrams", s_udp_unspec_queued},
    {"udp connect(AF_UNSPEC) keeps the program's bind(SLICE_IP, 0)", s_udp_unspec_pinned},
    {"udp connect to another peer without disconnecting", s_udp_reconnect},
    {"udp send() without address on an unbound socket", s_udp_send_unbound},
    {"udp write() on an unbound socket", s_udp_write_unbound},
    {"udp sendmsg() without address on an unbound socket", s_udp_sendmsg_unbound},
    {"udp connect with a bad length", s_udp_badlen_connect},
    {"udp sendto with a short sockaddr_in6", s_udp_badlen_sendto},
    {"udp placement on a fresh socket with UDP_GRO", s_udp_gro_swap},
    {"udp placement on a fresh socket with SO_RXQ_OVFL", s_udp_rxq_ovfl_swap},
    {"udp IPv6 connect and sendto", s_udp_v6},
    {"udp v4-mapped sendto and connect", s_udp_mapped},
    {"udp bind(0.0.0.0, 0) then connect / sendto", s_udp_wildcard_deferred},
    {"udp bound to the program's port", s_udp_own_port},
    {"udp ECONNREFUSED from ICMP", s_udp_refused},
    {"IP_BIND_ADDRESS_NO_PORT + bind(SLICE_IP, 0) + connect", s_bind_slice_ip_no_port},
    {"bind(SLICE_IP, 0) + connect", s_bind_slice_ip},
    {"bind(0.0.0.0, 0) + connect", s_bind_wildcard_connect},
    {"bind(0.0.0.0, 0) + getsockname + connect", s_bind_wildcard_name_connect},
    {"bind to the program's own port + connect", s_bind_own_port},
    {"bind to a non-slice IP", s_bind_other_ip},
    {"tcp connect(AF_UNSPEC) and reconnect", s_tcp_unspec},
    {"loopback destination is skipped", s_skip_loopback},
    {"RTLD_DEEPBIND library connects (tcp)", s_deepbind_tcp},
    {"RTLD_DEEPBIND library sends (udp)", s_deepbind_udp},
    {"plain dlopen library connects", s_dlopen_plain},
    {"dlmopen RTLD_DEEPBIND library connects (IPv6)", s_dlmopen_deepbind},
    {"unreadable msghdr: EFAULT", s_efault_msghdr},
    {"vfork + execlp with stack arguments after bind(0.0.0.0, 0)", s_vfork_execlp},
    {"posix_spawn / posix_spawnp (dup2 action) after bind(0.0.0.0, 0)", s_posix_spawn},
    {"exec after connect: the program's own NO_PORT / LOCAL_PORT_RANGE", s_exec_own_options},
    {"exec with a close-on-exec socket after bind(0.0.0.0, 0)", s_exec_cloexec},
    {"system() and popen() after bind(0.0.0.0, 0)", s_system_popen},
    {"udp placement on a fresh socket with five QUIC options", s_udp_quic_opts_swap},
};
#define NSCEN ((int)(sizeof SCENARIOS / sizeof SCENARIOS[0]))

static void run_one(int n) {
    cur = n;
    say("== %s", SCENARIOS[n - 1].name);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(10);
        SCENARIOS[n - 1].run();
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (WIFSIGNALED(st))
        say("exit = killed by %s", sigabbrev_np(WTERMSIG(st)) ? sigabbrev_np(WTERMSIG(st)) : "?");
    else if (WEXITSTATUS(st) != 0)
        say("exit = %d", WEXITSTATUS(st));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (getenv("PROBE_TIMES"))
        fprintf(stderr, "time S%02d %ld ms\n", n, (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
}

int main(int argc, char **argv) {
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n > 0) self_exe[n] = 0;
    if (argc >= 4 && strcmp(argv[1], "--exec-child") == 0) {
        cur = atoi(argv[2]);
        if (argc > 4) {
            char extra[256] = "";
            for (int a = 4; a < argc; a++) snprintf(extra + strlen(extra), sizeof extra - strlen(extra), " %s", argv[a]);
            say("extra args =%s", extra);
        }
        exec_continue(atoi(argv[3]));
        return 0;
    }
    int i = 1;
    if (argc > 2 && strcmp(argv[1], "--deep") == 0) {
        deep_lib = argv[2];
        i = 3;
    }
    if (argc > i && strcmp(argv[i], "--count") == 0) {
        printf("%d\n", NSCEN);
        return 0;
    }
    if (argc == i || strcmp(argv[i], "all") == 0) {
        for (int s = 1; s <= NSCEN; s++) run_one(s);
    } else {
        for (; i < argc; i++) {
            int s = atoi(argv[i]);
            if (s >= 1 && s <= NSCEN) run_one(s);
        }
    }
    return 0;
}
