/* Descriptors at or above 2^20 (issue 8, item 9): systemd raises fs.nr_open to 2^30, so a
 * program may own such fds. The shim must keep its per-socket state for them (or behave
 * correctly without it), never turn a call into a silent no-op.
 *
 * usage: highfd HOST PORT
 * Raises RLIMIT_NOFILE, moves its sockets to fd numbers >= 2^20, and prints:
 *   FD <n>                       the number used (>= 1048576)
 *   WILDCARD <port>              bind(0.0.0.0:0) then getsockname: the port the bind gave (!= 0)
 *   TCP <ret> <errno> <ip> <port>  bind(0.0.0.0:0) + connect(HOST:PORT), then getsockname
 *   REUSEADDR <v>                getsockopt(SO_REUSEADDR) after that connect (the program set 0)
 *   UDP <ip> <port> / UDP2 <ip> <port>  a UDP socket's local address after its first/second sendto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static int high(int s, int at) {
    int fd = dup2(s, at);
    if (fd < 0) { perror("dup2"); exit(2); }
    close(s);
    return fd;
}

static void name(const char *key, int fd) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    memset(&a, 0, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    char ip[64];
    inet_ntop(AF_INET, &a.sin_addr, ip, sizeof ip);
    printf("%s %s %d\n", key, ip, ntohs(a.sin_port));
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    struct rlimit rl = {(1 << 20) + 4096, (1 << 20) + 4096};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        /* Raising the hard limit needs CAP_SYS_RESOURCE (and fs.nr_open above 2^20). */
        printf("SKIP setrlimit(RLIMIT_NOFILE, 2^20 + 4096): %s\n", strerror(errno));
        return 0;
    }
    int base = (1 << 20) + 17;
    struct sockaddr_in any, dst;
    memset(&any, 0, sizeof any);
    any.sin_family = AF_INET;
    dst = any;
    dst.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &dst.sin_addr);

    int w = high(socket(AF_INET, SOCK_STREAM, 0), base);
    printf("FD %d\n", w);
    bind(w, (struct sockaddr *)&any, sizeof any);
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    getsockname(w, (struct sockaddr *)&a, &len);
    printf("WILDCARD %d\n", ntohs(a.sin_port));

    int t = high(socket(AF_INET, SOCK_STREAM, 0), base + 1);
    int zero = 0;
    setsockopt(t, SOL_SOCKET, SO_REUSEADDR, &zero, sizeof zero);
    bind(t, (struct sockaddr *)&any, sizeof any);
    int r = connect(t, (struct sockaddr *)&dst, sizeof dst);
    int e = r ? errno : 0;
    len = sizeof a;
    getsockname(t, (struct sockaddr *)&a, &len);
    char ip[64];
    inet_ntop(AF_INET, &a.sin_addr, ip, sizeof ip);
    printf("TCP %d %d %s %d\n", r, e, ip, ntohs(a.sin_port));
    int v = -1;
    len = sizeof v;
    getsockopt(t, SOL_SOCKET, SO_REUSEADDR, &v, &len);
    printf("REUSEADDR %d\n", v);

    int u = high(socket(AF_INET, SOCK_DGRAM, 0), base + 2);
    sendto(u, "x", 1, 0, (struct sockaddr *)&dst, sizeof dst);
    name("UDP", u);
    sendto(u, "y", 1, 0, (struct sockaddr *)&dst, sizeof dst);
    name("UDP2", u);
    return 0;
}
