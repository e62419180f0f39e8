// floor PEER_IP PORT SLICE_IP LO HI N ROUNDS: what the kernel strategy's connect costs with no
// shim at all — the same system calls made by the program itself — against a plain connect, and
// the cost of each single call the shim makes around it. CPU µs (user+sys of this thread) per
// socket+connect+close, median over ROUNDS interleaved rounds of N; ns per single call from
// 200,000 calls. Sockets close with RST (SO_LINGER 0): no TIME_WAIT piles up. See floor.sh.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#ifndef IP_LOCAL_PORT_RANGE
#define IP_LOCAL_PORT_RANGE 51
#endif

static struct sockaddr_in peer, slice;
static unsigned range;

static double cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void set(int s, int level, int name, unsigned v) {
    if (setsockopt(s, level, name, &v, sizeof v)) { perror("setsockopt"); exit(2); }
}

static void done(int s) {
    struct linger l = {1, 0};
    setsockopt(s, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(s);
}

/* 0 plain; 1 the kernel strategy's own calls (NO_PORT, bind, SO_REUSEADDR, IP_LOCAL_PORT_RANGE);
 * 2 = 1 + the check of the chosen port (getsockname); 3 = 2 + what the shim adds around it
 * (fstat at socket(), fstat + process_vm_readv of the address at connect). */
static void one(int mode) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct stat st;
    if (mode >= 3) fstat(s, &st);
    if (mode >= 3) {
        struct sockaddr_in copy;
        struct iovec l = {&copy, sizeof copy}, r = {&peer, sizeof peer};
        process_vm_readv(getpid(), &l, 1, &r, 1, 0);
        fstat(s, &st);
    }
    if (mode >= 1) {
        set(s, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1);
        if (bind(s, (struct sockaddr *)&slice, sizeof slice)) { perror("bind"); exit(2); }
        set(s, SOL_SOCKET, SO_REUSEADDR, 1);
        set(s, IPPROTO_IP, IP_LOCAL_PORT_RANGE, range);
    }
    if (connect(s, (struct sockaddr *)&peer, sizeof peer)) { perror("connect"); exit(2); }
    if (mode >= 2) {
        struct sockaddr_in a;
        socklen_t len = sizeof a;
        getsockname(s, (struct sockaddr *)&a, &len);
    }
    done(s);
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ns per call of each single call the shim makes, on one unconnected TCP socket. */
static void singles(int rounds) {
    const char *names[] = {"fstat", "getsockname", "getsockopt(SO_PROTOCOL)", "process_vm_readv(16 B)",
                           "setsockopt(int)", "getpid"};
    enum { K = 6, CALLS = 200000 };
    double *v = calloc(K * rounds, sizeof *v);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    pid_t pid = getpid();
    for (int r = 0; r < rounds; r++)
        for (int k = 0; k < K; k++) {
            double c0 = cpu();
            for (int i = 0; i < CALLS; i++) {
                struct stat st;
                struct sockaddr_in a;
                socklen_t len = sizeof a;
                int p;
                switch (k) {
                case 0: fstat(s, &st); break;
                case 1: getsockname(s, (struct sockaddr *)&a, &len); break;
                case 2: len = sizeof p; getsockopt(s, SOL_SOCKET, SO_PROTOCOL, &p, &len); break;
                case 3: {
                    struct iovec l = {&a, sizeof a}, rr = {&peer, sizeof peer};
                    process_vm_readv(pid, &l, 1, &rr, 1, 0);
                    break;
                }
                case 4: set(s, SOL_SOCKET, SO_REUSEADDR, 1); break;
                case 5: getpid(); break;
                }
            }
            v[k * rounds + r] = (cpu() - c0) * 1e3 / CALLS;
        }
    for (int k = 0; k < K; k++) {
        qsort(v + k * rounds, rounds, sizeof *v, cmp);
        printf("call %-26s %7.0f ns\n", names[k], v[k * rounds + rounds / 2]);
    }
    close(s);
}

int main(int c, char **v) {
    if (c < 8) return 2;
    peer.sin_family = AF_INET;
    peer.sin_port = htons(atoi(v[2]));
    inet_pton(AF_INET, v[1], &peer.sin_addr);
    slice.sin_family = AF_INET;
    inet_pton(AF_INET, v[3], &slice.sin_addr);
    range = (unsigned)atoi(v[5]) << 16 | (unsigned)atoi(v[4]);
    int n = atoi(v[6]), rounds = atoi(v[7]);
    const char *names[] = {"plain socket+connect+close", "+ kernel strategy's own calls (4)",
                           "+ check of the chosen port (getsockname)", "+ the shim's looks (2 fstat, process_vm_readv)"};
    enum { M = 4 };
    double *t = calloc(M * rounds, sizeof *t), *ratio = calloc(M * rounds, sizeof *ratio);
    for (int i = 0; i < 200; i++) one(0); /* warm up */
    for (int r = 0; r < rounds; r++)
        for (int m = 0; m < M; m++) {
            double c0 = cpu();
            for (int i = 0; i < n; i++) one(m);
            t[m * rounds + r] = (cpu() - c0) / n;
        }
    for (int r = 0; r < rounds; r++)
        for (int m = 0; m < M; m++) ratio[m * rounds + r] = t[m * rounds + r] / t[r];
    for (int m = 0; m < M; m++) {
        qsort(t + m * rounds, rounds, sizeof *t, cmp);
        qsort(ratio + m * rounds, rounds, sizeof *ratio, cmp);
        printf("conn %-48s %7.2f µs  %.3fx\n", names[m], t[m * rounds + rounds / 2], ratio[m * rounds + rounds / 2]);
    }
    singles(rounds);
    return 0;
}
