/* A library the probe opens with RTLD_DEEPBIND (as PHP opens its extensions): its calls to
 * connect/sendto bind to the first definition in its own lookup scope, libc, unless the shim
 * makes it reach the shim's definitions. */
#include <sys/socket.h>
#include <sys/types.h>

int deep_connect(int fd, const struct sockaddr *a, socklen_t l) { return connect(fd, a, l); }

long deep_sendto(int fd, const void *b, size_t n, int f, const struct sockaddr *a, socklen_t l) {
    return sendto(fd, b, n, f, a, l);
}
