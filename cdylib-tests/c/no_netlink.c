/* Issue 8 item 6: run a program as a hardened service would, without AF_NETLINK.
 *
 * argv: PROGRAM ARGS... — installs a seccomp filter under which socket(AF_NETLINK, ...) fails
 * with EAFNOSUPPORT (what systemd's RestrictAddressFamilies= does), then execs PROGRAM. */
#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>
#include "no_netlink_filter.h"

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: no_netlink PROGRAM ARGS...\n"); return 2; }
    if (deny_netlink() != 0) { perror("seccomp"); return 126; }
    execvp(argv[1], argv + 1);
    perror("execvp");
    return 127;
}
