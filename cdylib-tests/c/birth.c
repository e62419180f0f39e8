/* TCP sockets the shim knows from their birth (socket() in this process): a connect takes such a
 * socket as unbound without a look (no getsockname, no SO_PROTOCOL) while nothing touched it.
 * These are the ways a program can touch it anyway; each must come out as it did with a look.
 *
 * usage: birth HOST PORT OTHER_IP
 * Prints one line per case:
 *   CASE <name> <connect ret> <errno> <local ip> <local port> <same socket 1|0> <listening 1|0>
 *        <SO_REUSEADDR>
 * (local address by getsockname after the connect; "same socket": the fd still holds the socket
 * it held before the connect, by inode).
 *   fresh       socket + connect
 *   sysbind     socket, bind(OTHER_IP:0) through syscall() (no hook sees it), connect
 *   noport      IP_BIND_ADDRESS_NO_PORT=1, bind(OTHER_IP:0) (hooked: only the IP is bound), connect
 *   dupnoport   as noport, but the option and the bind go through a dup; connect on the original
 *   forkbind    a fork child sets SO_REUSEADDR=1 on the shared socket and binds it to OTHER_IP:0
 *               (through the hooks, in its own records), exits; the parent connects
 *   listen      listen() (autobinds a port), then connect: the kernel's answer, the listener kept
 *   syslisten   as listen, through syscall()
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
#include <sys/wait.h>
#include <unistd.h>

static struct sockaddr_in dst, other;

static unsigned long ino(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 ? (unsigned long)st.st_ino : 0;
}

static void report(const char *name, int s, unsigned long before, int r, int e) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    memset(&a, 0, sizeof a);
    getsockname(s, (struct sockaddr *)&a, &len);
    char ip[64];
    inet_ntop(AF_INET, &a.sin_addr, ip, sizeof ip);
    int acc = 0, reuse = 0;
    socklen_t alen = sizeof acc;
    getsockopt(s, SOL_SOCKET, SO_ACCEPTCONN, &acc, &alen);
    alen = sizeof reuse;
    getsockopt(s, SOL_SOCKET, SO_REUSEADDR, &reuse, &alen);
    printf("CASE %s %d %d %s %d %d %d %d\n", name, r, r ? e : 0, ip, ntohs(a.sin_port), ino(s) == before, acc,
           reuse);
    fflush(stdout);
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
    other.sin_family = AF_INET;
    inet_pton(AF_INET, argv[3], &other.sin_addr);
    int one = 1;
    int keep[12], k = 0;

    int s = socket(AF_INET, SOCK_STREAM, 0);
    conn("fresh", s);
    keep[k++] = s;

    s = socket(AF_INET, SOCK_STREAM, 0);
    if (syscall(SYS_bind, s, (struct sockaddr *)&other, sizeof other) != 0) { perror("SYS_bind"); return 2; }
    conn("sysbind", s);
    keep[k++] = s;

    s = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(s, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    if (bind(s, (struct sockaddr *)&other, sizeof other) != 0) { perror("bind"); return 2; }
    conn("noport", s);
    keep[k++] = s;

    s = socket(AF_INET, SOCK_STREAM, 0);
    int d = dup(s);
    setsockopt(d, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    if (bind(d, (struct sockaddr *)&other, sizeof other) != 0) { perror("bind dup"); return 2; }
    conn("dupnoport", s);
    keep[k++] = s;

    s = socket(AF_INET, SOCK_STREAM, 0);
    pid_t child = fork();
    if (child == 0) {
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        _exit(bind(s, (struct sockaddr *)&other, sizeof other) != 0);
    }
    int status = 0;
    if (child < 0 || waitpid(child, &status, 0) != child || status != 0) { perror("fork bind"); return 2; }
    conn("forkbind", s);
    keep[k++] = s;

    s = socket(AF_INET, SOCK_STREAM, 0);
    if (listen(s, 4) != 0) { perror("listen"); return 2; }
    conn("listen", s);
    keep[k++] = s;

    s = socket(AF_INET, SOCK_STREAM, 0);
    if (syscall(SYS_listen, s, 4) != 0) { perror("SYS_listen"); return 2; }
    conn("syslisten", s);
    keep[k++] = s;

    for (int i = 0; i < k; i++) close(keep[i]);
    return 0;
}
