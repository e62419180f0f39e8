/* Issue 8 item 7: a thread dup2()s a UDP socket of the program over every netlink socket it
 * finds (the shim's own sock_diag socket) while three threads place UDP flows.
 *
 * argv: PEER_IP PORT ITERATIONS — each placing thread makes ITERATIONS flows (socket, connect,
 * send, close). Prints `ok N err E hits H` (H: dup2 calls over a netlink socket). A shim that
 * reads from or blocks on a descriptor that is no longer its own hangs here. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static struct sockaddr_in peer;
static int iterations;
static atomic_int stop;
static atomic_long ok, err, hits;

static void *placer(void *arg) {
    (void)arg;
    for (int i = 0; i < iterations; i++) {
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        if (connect(s, (struct sockaddr *)&peer, sizeof peer) == 0 && send(s, "d", 1, 0) == 1)
            atomic_fetch_add(&ok, 1);
        else
            atomic_fetch_add(&err, 1);
        close(s);
    }
    return NULL;
}

static void *clobber(void *arg) {
    (void)arg;
    int u = socket(AF_INET, SOCK_DGRAM, 0);
    while (!atomic_load(&stop)) {
        for (int fd = 3; fd < 1100; fd++) {
            int domain = 0;
            socklen_t len = sizeof domain;
            if (fd != u && getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 && domain == AF_NETLINK) {
                dup2(u, fd);
                atomic_fetch_add(&hits, 1);
            }
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: PEER_IP PORT ITERATIONS\n"); return 2; }
    peer.sin_family = AF_INET;
    inet_pton(AF_INET, argv[1], &peer.sin_addr);
    peer.sin_port = htons(atoi(argv[2]));
    iterations = atoi(argv[3]);
    pthread_t c, p[3];
    pthread_create(&c, NULL, clobber, NULL);
    for (int i = 0; i < 3; i++) pthread_create(&p[i], NULL, placer, NULL);
    for (int i = 0; i < 3; i++) pthread_join(p[i], NULL);
    atomic_store(&stop, 1);
    pthread_join(c, NULL);
    printf("ok %ld err %ld hits %ld\n", atomic_load(&ok), atomic_load(&err), atomic_load(&hits));
    return 0;
}
