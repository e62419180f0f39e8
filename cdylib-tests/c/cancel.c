/* pthread_cancel of threads blocked inside hooked calls (issue 8, item 1).
 *
 * usage: cancel PORT1 PORT2 — two free ports for its own listeners on 127.0.0.1.
 * Prints "PEER ip port" for the connections its send cases made, as the listener saw them.
 * Cases: connect (full accept queue), sendto and sendmsg (full buffers), accept (no client),
 * fcntl(F_SETLKW) (a lock a child holds). Each case starts a thread that blocks in one call,
 * cancels it, and joins it: the thread's cleanup handler must have run and pthread_join must return PTHREAD_CANCELED. Prints one line
 * "CASE <name> ok|FAIL <why>" per case and exits 0 when every case is ok.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static int port; /* the listener the current case connects to */
static volatile int cleaned;
static volatile int reached; /* the thread is about to block */

static void cleanup(void *arg) { (void)arg; cleaned = 1; }

static struct sockaddr_in dst(void) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static int connected(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = dst();
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); exit(2); }
    return s;
}

/* connect() to a listener whose accept queue is full: the SYN is dropped, connect blocks. */
static void *in_connect(void *arg) {
    (void)arg;
    pthread_cleanup_push(cleanup, NULL);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = dst();
    reached = 1;
    connect(s, (struct sockaddr *)&a, sizeof a);
    pthread_cleanup_pop(0);
    return (void *)1;
}

/* A send that blocks: the peer never reads, the buffers fill. */
static void *in_send(void *arg) {
    int how = (int)(long)arg;
    pthread_cleanup_push(cleanup, NULL);
    int s = connected();
    int small = 4096;
    setsockopt(s, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    static char buf[65536];
    reached = 1;
    for (;;) {
        if (how == 0) {
            sendto(s, buf, sizeof buf, 0, NULL, 0);
        } else {
            struct iovec iov = {buf, sizeof buf};
            struct msghdr m;
            memset(&m, 0, sizeof m);
            m.msg_iov = &iov;
            m.msg_iovlen = 1;
            sendmsg(s, &m, 0);
        }
    }
    pthread_cleanup_pop(0);
    return (void *)1;
}

/* accept() on a listener nobody connects to. */
static int idle_listener = -1;
static void *in_accept(void *arg) {
    (void)arg;
    pthread_cleanup_push(cleanup, NULL);
    reached = 1;
    accept(idle_listener, NULL, NULL);
    pthread_cleanup_pop(0);
    return (void *)1;
}

/* fcntl(F_SETLKW) on a lock a child process holds. */
static char lockpath[64];
static void *in_lock(void *arg) {
    (void)arg;
    pthread_cleanup_push(cleanup, NULL);
    int f = open(lockpath, O_RDWR);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    reached = 1;
    fcntl(f, F_SETLKW, &fl);
    pthread_cleanup_pop(0);
    return (void *)1;
}

static int listener(int at, int backlog) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    port = at;
    struct sockaddr_in a = dst();
    if (bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, backlog) != 0) { perror("listen"); exit(2); }
    return l;
}

static void print_peer(int l) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int c = accept(l, (struct sockaddr *)&a, &len);
    char ip[64];
    if (c >= 0) printf("PEER %s %d\n", inet_ntop(AF_INET, &a.sin_addr, ip, sizeof ip), ntohs(a.sin_port));
}

static int run(const char *name, void *(*fn)(void *), void *arg) {
    pthread_t t;
    cleaned = reached = 0;
    pthread_create(&t, NULL, fn, arg);
    while (!reached) usleep(1000);
    usleep(200 * 1000); /* let it block */
    pthread_cancel(t);
    void *ret = NULL;
    pthread_join(t, &ret);
    int ok = ret == PTHREAD_CANCELED && cleaned;
    printf("CASE %s %s\n", name, ok ? "ok" : "FAIL");
    fflush(stdout);
    return ok;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int all = 1;
    int l = listener(atoi(argv[1]), 16);
    all &= run("sendto", in_send, (void *)0);
    all &= run("sendmsg", in_send, (void *)1);
    print_peer(l);
    print_peer(l);

    /* The first port again, on 127.0.0.3 (a listener there is nobody's: no one connects). */
    idle_listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in idle = dst();
    idle.sin_port = htons(atoi(argv[1]));
    idle.sin_addr.s_addr = htonl(0x7f000003);
    if (bind(idle_listener, (struct sockaddr *)&idle, sizeof idle) != 0 || listen(idle_listener, 1) != 0) {
        perror("idle listener");
        return 2;
    }
    all &= run("accept", in_accept, NULL);

    snprintf(lockpath, sizeof lockpath, "/tmp/portrange-cancel-%d", getpid());
    int f = open(lockpath, O_RDWR | O_CREAT, 0600);
    int pipefd[2];
    pipe(pipefd);
    pid_t child = fork();
    if (child == 0) {
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
        fcntl(f, F_SETLK, &fl);
        write(pipefd[1], "x", 1);
        pause();
        _exit(0);
    }
    char c;
    read(pipefd[0], &c, 1);
    all &= run("fcntl_setlkw", in_lock, NULL);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    unlink(lockpath);

    /* Accept queue full (backlog 0: one pending connection fills it). */
    listener(atoi(argv[2]), 0);
    connected();
    all &= run("connect", in_connect, NULL);
    printf("DONE %s\n", all ? "ok" : "FAIL");
    return all ? 0 : 1;
}
