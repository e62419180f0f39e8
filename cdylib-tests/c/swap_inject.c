/* Issue 8 item 8, fault injection: preloaded after the shim, this library wraps socket(). When
 * the program has set INJECT_FD=N, the next close-on-exec AF_INET/AF_INET6 socket created (the
 * fresh socket the shim makes to swap into the program's fd) is followed at once by what
 * another thread of the program could do at that moment: close fd N and reuse the number for
 * another file (/dev/null, with dup2). Then INJECT_FD is removed and INJECTED=1 set. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int socket(int domain, int type, int protocol) {
    static int (*real)(int, int, int);
    if (!real) real = (int (*)(int, int, int))dlsym(RTLD_NEXT, "socket");
    int s = real(domain, type, protocol);
    const char *target = getenv("INJECT_FD");
    if (s >= 0 && target && (type & SOCK_CLOEXEC) && (domain == AF_INET || domain == AF_INET6)) {
        int fd = atoi(target);
        unsetenv("INJECT_FD");
        close(fd);
        int n = open("/dev/null", O_RDONLY);
        if (n != fd) {
            dup2(n, fd);
            close(n);
        }
        setenv("INJECTED", "1", 1);
    }
    return s;
}
