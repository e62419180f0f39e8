/* Connect to 127.0.0.1:PORT over TCP and print the local address the kernel gave it.
   Built statically by the cli tests: LD_PRELOAD cannot reach it. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); return 1; }
    struct sockaddr_in l; socklen_t n = sizeof l;
    getsockname(fd, (struct sockaddr *)&l, &n);
    char ip[32];
    printf("local %s %d\n", inet_ntop(AF_INET, &l.sin_addr, ip, sizeof ip), ntohs(l.sin_port));
    close(fd);
    return 0;
}
