/* Issue 8 item 6: sock_diag goes away while the program runs (it installs a filter denying
 * AF_NETLINK itself, after the shim started with sock_diag available).
 *
 * argv: PEER_IP PORT SLICE_IP LO HI. First the program holds every port LO..HI of SLICE_IP itself
 * (SO_REUSEADDR=1, explicit binds, left alone by the shim): a crowded slice, where a UDP connect
 * finds no port for an exclusive bind and goes on to the cookie check, which needs sock_diag.
 * Then it denies AF_NETLINK and makes one UDP connect to the peer; closes its holders; makes two
 * more. Each connected socket sends one datagram on success and is kept open; prints
 * `udp RET ERRNO LOCAL_PORT` for each of the three (LOCAL_PORT: getsockname after the connect,
 * 0 if unbound). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "no_netlink_filter.h"

static void udp(const struct sockaddr_in *peer) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    int r = connect(s, (const struct sockaddr *)peer, sizeof *peer);
    int e = r == 0 ? 0 : errno;
    if (r == 0) send(s, "l", 1, 0);
    struct sockaddr_in me = {0};
    socklen_t len = sizeof me;
    getsockname(s, (struct sockaddr *)&me, &len);
    printf("udp %d %d %d\n", r, e, ntohs(me.sin_port));
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: PEER_IP PORT SLICE_IP LO HI\n"); return 2; }
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &peer.sin_addr);
    int lo = atoi(argv[4]), hi = atoi(argv[5]), held[64], n = 0;
    for (int p = lo; p <= hi && n < 64; p++) {
        struct sockaddr_in at = {.sin_family = AF_INET, .sin_port = htons(p)};
        inet_pton(AF_INET, argv[3], &at.sin_addr);
        int s = socket(AF_INET, SOCK_DGRAM, 0), one = 1;
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(s, (struct sockaddr *)&at, sizeof at) != 0) { perror("bind"); return 1; }
        held[n++] = s;
    }
    if (deny_netlink() != 0) { perror("seccomp"); return 126; }
    udp(&peer);
    for (int i = 0; i < n; i++) close(held[i]);
    udp(&peer);
    udp(&peer);
    return 0;
}
