/* Signal handlers that connect while their thread is inside the shim (issue 8, item 5).
 *
 * usage: sighandler HOST PORT COUNT SECONDS
 * Until COUNT handler connects were made (or SECONDS passed), the main thread connects and closes (RST) TCP sockets to HOST:PORT in a loop; a 300 us
 * SIGALRM interval timer interrupts it, and the handler itself (async-signal-safe calls only)
 * opens a socket, connects it to HOST:PORT and closes it. Every handler connect must leave from
 * the slice or be refused (EADDRNOTAVAIL) — never leave unplaced.
 * Prints "HANDLER ok <ip> <port>" or "HANDLER err <errno>" per handler connect (at most 4096),
 * then "MAIN <n>" (main-thread connects) and "DONE".
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
#include <time.h>
#include <unistd.h>

#define MAX 4096
static struct sockaddr_in dst;
static struct { int err; struct sockaddr_in local; } got[MAX];
static volatile int ngot;

static void rst_close(int s) {
    struct linger l = {1, 0};
    setsockopt(s, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(s);
}

static void on_alarm(int sig) {
    (void)sig;
    int saved = errno;
    if (ngot < MAX) {
        int i = ngot++;
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&dst, sizeof dst) == 0) {
            socklen_t len = sizeof got[i].local;
            getsockname(s, (struct sockaddr *)&got[i].local, &len);
            got[i].err = 0;
        } else {
            got[i].err = errno;
        }
        rst_close(s);
    }
    errno = saved;
}

int main(int argc, char **argv) {
    if (argc < 5) return 2;
    memset(&dst, 0, sizeof dst);
    dst.sin_family = AF_INET;
    dst.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &dst.sin_addr);
    int want = atoi(argv[3]);
    double secs = atof(argv[4]);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 300}, {0, 300}};
    setitimer(ITIMER_REAL, &it, NULL);

    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long n = 0;
    do {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&dst, sizeof dst) == 0) n++;
        rst_close(s);
        clock_gettime(CLOCK_MONOTONIC, &t);
    } while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 < secs && ngot < want && ngot < MAX);
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);

    for (int i = 0; i < ngot; i++) {
        char ip[64];
        if (got[i].err == 0) {
            inet_ntop(AF_INET, &got[i].local.sin_addr, ip, sizeof ip);
            printf("HANDLER ok %s %d\n", ip, ntohs(got[i].local.sin_port));
        } else {
            printf("HANDLER err %d\n", got[i].err);
        }
    }
    printf("MAIN %ld\nDONE\n", n);
    return 0;
}
