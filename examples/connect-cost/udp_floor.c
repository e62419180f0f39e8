// udp_floor PEER_IP PORT SLICE_IP LO HI N ROUNDS: what a UDP socket+connect+close placed by the
// shim (an exclusive port first, issue 11) costs with no shim at all — the same system calls made
// by the program itself — against a plain one. CPU µs (this thread) per cycle, median over ROUNDS
// interleaved rounds of N, and each configuration's ratio to plain in the same round (median).
// See udp_floor.sh.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in peer, slice;
static int lo, n_ports;

static double cpu(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

/* 0 plain (the kernel picks the port inside connect); 1 the placement's own calls: bind(slice
 * port) with SO_REUSEADDR off, connect, SO_REUSEADDR=1 (shared from now on); 2 = 1 + the
 * socket's identity (fstat at socket() and at connect); 3 = 2 + the address read with the
 * kernel's checks (process_vm_readv, the pid cached). */
static pid_t self;
static void one(int mode, int i) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct stat st;
    if (mode >= 2) {
        fstat(s, &st);
        fstat(s, &st);
    }
    if (mode >= 3) {
        struct sockaddr_in copy;
        struct iovec l = {&copy, sizeof copy}, r = {&peer, sizeof peer};
        process_vm_readv(self, &l, 1, &r, 1, 0);
    }
    if (mode >= 1) {
        slice.sin_port = htons(lo + i % n_ports);
        if (bind(s, (struct sockaddr *)&slice, sizeof slice)) { perror("bind"); exit(2); }
    }
    if (connect(s, (struct sockaddr *)&peer, sizeof peer)) { perror("connect"); exit(2); }
    if (mode >= 1) {
        int one = 1;
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    }
    close(s);
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 8) { fprintf(stderr, "usage: PEER_IP PORT SLICE_IP LO HI N ROUNDS\n"); return 2; }
    peer.sin_family = slice.sin_family = AF_INET;
    inet_pton(AF_INET, argv[1], &peer.sin_addr);
    peer.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[3], &slice.sin_addr);
    lo = atoi(argv[4]);
    n_ports = atoi(argv[5]) - lo + 1;
    int n = atoi(argv[6]), rounds = atoi(argv[7]);
    self = getpid();
    enum { M = 4 };
    const char *names[M] = {"plain socket+connect+close", "+ bind(slice port), SO_REUSEADDR=1 after connect",
                            "+ fstat x2 (the socket's identity)", "+ process_vm_readv (the checked address read)"};
    double *us = calloc(M * rounds, sizeof *us), *ratio = calloc(M * rounds, sizeof *ratio);
    for (int r = 0; r < rounds; r++)
        for (int m = 0; m < M; m++) {
            double t = cpu();
            for (int i = 0; i < n; i++) one(m, i);
            us[m * rounds + r] = (cpu() - t) / n;
        }
    for (int m = 0; m < M; m++)
        for (int r = 0; r < rounds; r++) ratio[m * rounds + r] = us[m * rounds + r] / us[r];
    printf("%-52s %10s %9s\n", "UDP, no shim (CPU per cycle)", "µs", "vs plain");
    for (int m = 0; m < M; m++) {
        qsort(us + m * rounds, rounds, sizeof *us, cmp);
        qsort(ratio + m * rounds, rounds, sizeof *ratio, cmp);
        printf("%-52s %10.2f %8.3fx\n", names[m], us[m * rounds + rounds / 2], ratio[m * rounds + rounds / 2]);
    }
    return 0;
}
