/* Issue 8 item 8: the program's socket is closed and its number reused while the shim places
 * it on a fresh socket (see swap_inject.c). The socket was bound to 0.0.0.0:0 and asked for its
 * port (getsockname), so the shim must place the connect on a fresh socket and swap it in.
 *
 * argv: PEER_IP TCP_PORT UDP_PORT. For tcp then udp: an injected connect, printing
 * `PROTO injected I connect R ERRNO fd KIND` (KIND: what the fd number refers to afterwards:
 * null = the program's new file, socket, closed), then a control connect without injection,
 * printing `PROTO control R ERRNO fd KIND`. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *kind(int fd) {
    struct stat st;
    if (fstat(fd, &st) != 0) return "closed";
    if (S_ISCHR(st.st_mode)) return "null";
    if (S_ISSOCK(st.st_mode)) return "socket";
    return "other";
}

static int prepared(int type) {
    int s = socket(AF_INET, type, 0);
    struct sockaddr_in any = {.sin_family = AF_INET};
    bind(s, (struct sockaddr *)&any, sizeof any);
    socklen_t len = sizeof any;
    getsockname(s, (struct sockaddr *)&any, &len);
    return s;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: PEER_IP TCP_PORT UDP_PORT\n"); return 2; }
    const char *proto[2] = {"tcp", "udp"};
    for (int i = 0; i < 2; i++) {
        int type = i == 0 ? SOCK_STREAM : SOCK_DGRAM;
        struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2 + i]))};
        inet_pton(AF_INET, argv[1], &peer.sin_addr);

        int s = prepared(type);
        char n[16];
        snprintf(n, sizeof n, "%d", s);
        setenv("INJECT_FD", n, 1);
        unsetenv("INJECTED");
        int r = connect(s, (struct sockaddr *)&peer, sizeof peer);
        int e = r == 0 ? 0 : errno;
        if (r == 0 && type == SOCK_DGRAM) send(s, "i", 1, 0);
        printf("%s injected %d connect %d %d fd %s\n", proto[i], getenv("INJECTED") != NULL, r, e, kind(s));
        unsetenv("INJECT_FD");
        close(s);

        s = prepared(type);
        r = connect(s, (struct sockaddr *)&peer, sizeof peer);
        e = r == 0 ? 0 : errno;
        if (r == 0 && type == SOCK_DGRAM) send(s, "c", 1, 0);
        printf("%s control %d %d fd %s\n", proto[i], r, e, kind(s));
        fflush(stdout);
        close(s);
    }
    return 0;
}
