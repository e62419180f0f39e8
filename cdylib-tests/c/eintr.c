/* A blocking connect interrupted by signals (issue 8, item 2): the common idiom
 *     while (connect(fd, ...) == -1 && errno == EINTR);
 * with a 1 ms SIGALRM interval timer (no SA_RESTART) against a slow link. The kernel goes on
 * with the handshake after EINTR, and a later connect() on the same socket waits for it, so
 * the loop ends with 0 and the peer sees one connection per socket.
 *
 * usage: eintr HOST PORT N
 * Prints "SOCK <i> <ret> <errno> <eintrs> <local-ip> <local-port>" per socket, then "EINTRS <n>".
 * A loop that sees more than 5000 EINTRs (5 s) gives up (ret -2).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static volatile sig_atomic_t ticks;
static void on_alarm(int sig) { (void)sig; ticks++; }

int main(int argc, char **argv) {
    if (argc < 4) return 2;
    struct sockaddr_in dst;
    memset(&dst, 0, sizeof dst);
    dst.sin_family = AF_INET;
    dst.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &dst.sin_addr);
    int n = atoi(argv[3]);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm; /* no SA_RESTART */
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 1000}, {0, 1000}};
    setitimer(ITIMER_REAL, &it, NULL);

    long total = 0;
    for (int i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        int r, e = 0, eintrs = 0;
        while ((r = connect(s, (struct sockaddr *)&dst, sizeof dst)) == -1 && errno == EINTR) {
            if (++eintrs > 5000) { r = -2; break; }
        }
        if (r == -1) e = errno;
        total += eintrs;
        struct sockaddr_in me;
        socklen_t len = sizeof me;
        getsockname(s, (struct sockaddr *)&me, &len);
        char ip[64];
        inet_ntop(AF_INET, &me.sin_addr, ip, sizeof ip);
        printf("SOCK %d %d %d %d %s %d\n", i, r, e, eintrs, ip, ntohs(me.sin_port));
        fflush(stdout);
        /* held open until exit */
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    printf("EINTRS %ld\n", total);
    return 0;
}
