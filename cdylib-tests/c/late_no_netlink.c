/* Issue 8 item 6: sock_diag goes away while the program runs (it installs a filter denying
 * AF_NETLINK itself, after the shim started with sock_diag available).
 *
 * argv: PEER_IP PORT — then 3 UDP sockets, each connected to the peer (one datagram sent on
 * success) and kept open; prints `udp RET ERRNO LOCAL_PORT` for each (LOCAL_PORT: getsockname
 * after the connect, 0 if unbound). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include "no_netlink_filter.h"

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: PEER_IP PORT\n"); return 2; }
    if (deny_netlink() != 0) { perror("seccomp"); return 126; }
    struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &peer.sin_addr);
    for (int i = 0; i < 3; i++) {
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        int r = connect(s, (struct sockaddr *)&peer, sizeof peer);
        int e = r == 0 ? 0 : errno;
        if (r == 0) send(s, "l", 1, 0);
        struct sockaddr_in me = {0};
        socklen_t len = sizeof me;
        getsockname(s, (struct sockaddr *)&me, &len);
        printf("udp %d %d %d\n", r, e, ntohs(me.sin_port));
    }
    return 0;
}
