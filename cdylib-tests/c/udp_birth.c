/* UDP sockets the shim knows from their birth (issue 11): a connect takes such a socket as
 * unbound without a look (no getsockname) while nothing the hooks saw touched it. These are the
 * ways a program can touch it anyway; each must come out as a look would have made it.
 *
 * usage: udp_birth HOST PORT OTHER_IP
 * Prints one line per case:
 *   CASE <name> <connect ret> <errno> <local ip> <local port> <same socket 1|0>
 * (local address by getsockname after the connect, v4-mapped shown as IPv4; "same socket": the
 * fd still holds the socket it held before the connect, by inode). Each connected socket sends
 * one datagram "<name>" and is kept open until the end.
 *   fresh       socket + connect
 *   v6fresh     an AF_INET6 socket + connect to ::ffff:HOST
 *   sysbind     socket, bind(OTHER_IP:0) through syscall() (no hook sees it), connect
 *   write       socket, write() without a peer (fails with EDESTADDRREQ after the kernel gave the
 *               socket a port of its own), connect
 *   sysconnect  socket, connect through syscall(), then connect again through libc
 *   dupbind     socket, bind(OTHER_IP:0) through a dup, connect on the original
 *   firstsend   socket, sendto(HOST:PORT) unconnected (the "connect ret" is sendto's, 0 on
 *               success; the datagram is "firstsend" itself)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static struct sockaddr_in dst, other;
static struct sockaddr_in6 dst6;

static unsigned long ino(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 ? (unsigned long)st.st_ino : 0;
}

static void report_sent(const char *name, int s, unsigned long before, int r, int e, int sent) {
    struct sockaddr_storage a;
    socklen_t len = sizeof a;
    memset(&a, 0, sizeof a);
    getsockname(s, (struct sockaddr *)&a, &len);
    char ip[64] = "?";
    int port = 0;
    if (a.ss_family == AF_INET6) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&a;
        if (IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr))
            inet_ntop(AF_INET, &a6->sin6_addr.s6_addr[12], ip, sizeof ip);
        else
            inet_ntop(AF_INET6, &a6->sin6_addr, ip, sizeof ip);
        port = ntohs(a6->sin6_port);
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)&a;
        inet_ntop(AF_INET, &a4->sin_addr, ip, sizeof ip);
        port = ntohs(a4->sin_port);
    }
    if (r == 0 && !sent) send(s, name, strlen(name), 0);
    printf("CASE %s %d %d %s %d %d\n", name, r, r ? e : 0, ip, port, ino(s) == before);
    fflush(stdout);
}

static void report(const char *name, int s, unsigned long before, int r, int e) {
    report_sent(name, s, before, r, e, 0);
}

static void conn(const char *name, int s) {
    unsigned long before = ino(s);
    int r = connect(s, (struct sockaddr *)&dst, sizeof dst);
    int e = errno;
    report(name, s, before, r, e);
}

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    dst.sin_family = AF_INET;
    dst.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &dst.sin_addr);
    dst6.sin6_family = AF_INET6;
    dst6.sin6_port = dst.sin_port;
    char mapped[80];
    snprintf(mapped, sizeof mapped, "::ffff:%s", argv[1]);
    inet_pton(AF_INET6, mapped, &dst6.sin6_addr);
    other.sin_family = AF_INET;
    inet_pton(AF_INET, argv[3], &other.sin_addr);
    int keep[8], k = 0;

    int s = socket(AF_INET, SOCK_DGRAM, 0);
    conn("fresh", s);
    keep[k++] = s;

    s = socket(AF_INET6, SOCK_DGRAM, 0);
    unsigned long before = ino(s);
    int r = connect(s, (struct sockaddr *)&dst6, sizeof dst6);
    report("v6fresh", s, before, r, errno);
    keep[k++] = s;

    s = socket(AF_INET, SOCK_DGRAM, 0);
    if (syscall(SYS_bind, s, (struct sockaddr *)&other, sizeof other) != 0) { perror("SYS_bind"); return 2; }
    conn("sysbind", s);
    keep[k++] = s;

    s = socket(AF_INET, SOCK_DGRAM, 0);
    if (write(s, "x", 1) != -1 || errno != EDESTADDRREQ) { perror("write"); return 2; }
    conn("write", s);
    keep[k++] = s;

    s = socket(AF_INET, SOCK_DGRAM, 0);
    if (syscall(SYS_connect, s, (struct sockaddr *)&dst, sizeof dst) != 0) { perror("SYS_connect"); return 2; }
    conn("sysconnect", s);
    keep[k++] = s;

    s = socket(AF_INET, SOCK_DGRAM, 0);
    int d = dup(s);
    if (bind(d, (struct sockaddr *)&other, sizeof other) != 0) { perror("bind dup"); return 2; }
    conn("dupbind", s);
    keep[k++] = s;
    close(d);

    s = socket(AF_INET, SOCK_DGRAM, 0);
    before = ino(s);
    r = sendto(s, "firstsend", 9, 0, (struct sockaddr *)&dst, sizeof dst) == 9 ? 0 : -1;
    report_sent("firstsend", s, before, r, errno, 1);
    keep[k++] = s;

    for (int i = 0; i < k; i++) close(keep[i]);
    return 0;
}
