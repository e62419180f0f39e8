/* A socket bound to the wildcard address with port 0 (a bind the shim defers), inherited by a
 * program started with exec, then connected: once by the exec'd program (this binary again,
 * `child FD IP PORT`), once by the parent after its fork child exec'd.
 *
 *   exec_inherit IP PORT   prints "CHILD local" and "PARENT local" (address:port of each flow)
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int wildcard_socket(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in any = {.sin_family = AF_INET};
    if (s < 0 || bind(s, (struct sockaddr *)&any, sizeof any) != 0) {
        perror("socket/bind");
        exit(2);
    }
    return s;
}

static void connect_and_print(const char *who, int s, const char *ip, const char *port) {
    struct sockaddr_in d = {.sin_family = AF_INET, .sin_port = htons(atoi(port))};
    inet_pton(AF_INET, ip, &d.sin_addr);
    if (connect(s, (struct sockaddr *)&d, sizeof d) != 0) {
        perror("connect");
        exit(3);
    }
    struct sockaddr_in l;
    socklen_t len = sizeof l;
    getsockname(s, (struct sockaddr *)&l, &len);
    printf("%s %s:%d\n", who, inet_ntoa(l.sin_addr), ntohs(l.sin_port));
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc == 5 && !strcmp(argv[1], "child")) {
        connect_and_print("CHILD", atoi(argv[2]), argv[3], argv[4]);
        return 0;
    }
    if (argc != 3) {
        fprintf(stderr, "usage: exec_inherit IP PORT\n");
        return 2;
    }
    /* The exec'd program connects the socket it inherited. */
    int s = wildcard_socket();
    char fd[16];
    snprintf(fd, sizeof fd, "%d", s);
    pid_t p = fork();
    if (p == 0) {
        execl("/proc/self/exe", argv[0], "child", fd, argv[1], argv[2], (char *)0);
        _exit(4);
    }
    int st;
    waitpid(p, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) return 5;
    close(s);
    /* The parent connects a socket its fork child kept across an exec (that child's shim bound it). */
    s = wildcard_socket();
    p = fork();
    if (p == 0) {
        execl("/bin/true", "true", (char *)0);
        _exit(4);
    }
    waitpid(p, &st, 0);
    connect_and_print("PARENT", s, argv[1], argv[2]);
    return 0;
}
