/* Issue 8 item 4: a shared library whose constructor connects, before the shim's constructor
 * has run (a DT_NEEDED library of the program, or one listed after the shim in LD_PRELOAD).
 * Peer from the environment: EARLY_PEER (IPv4), EARLY_UDP, EARLY_TCP (ports).
 * Prints `early udp LOCAL_PORT` and `early tcp LOCAL_PORT` (or `early PROTO err ERRNO`). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

void early_flows(const char *who) {
    const char *ip = getenv("EARLY_PEER"), *u = getenv("EARLY_UDP"), *t = getenv("EARLY_TCP");
    if (!ip || !u || !t) return;
    const char *proto[2] = {"udp", "tcp"};
    const char *port[2] = {u, t};
    for (int i = 0; i < 2; i++) {
        struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(atoi(port[i]))};
        inet_pton(AF_INET, ip, &peer.sin_addr);
        int s = socket(AF_INET, i == 0 ? SOCK_DGRAM : SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&peer, sizeof peer) != 0) {
            printf("%s %s err %d\n", who, proto[i], errno);
            close(s);
            continue;
        }
        if (i == 0) send(s, "e", 1, 0);
        struct sockaddr_in me;
        socklen_t len = sizeof me;
        getsockname(s, (struct sockaddr *)&me, &len);
        printf("%s %s %d\n", who, proto[i], ntohs(me.sin_port));
        fflush(stdout);
        close(s);
    }
}

__attribute__((constructor)) static void early(void) { early_flows("early"); }
