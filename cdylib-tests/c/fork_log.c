/* Issue 8 item 3: fork() in a multi-threaded program must never hang the child.
 *
 * argv: PEER_IP UDP_PORT TCP_PORT FORKS
 * Two threads place UDP flows in a loop (socket, connect, send, close) while the main thread
 * forks FORKS times. Each child makes a UDP flow and a TCP connection (both placed, both logged
 * at debug level), then _exit(0). A child not finished after 5 s is counted as hung and killed.
 * Prints `forks N hung H child_failed F thread_flows T thread_errors E`. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in udp_peer, tcp_peer;
static atomic_int stop;
static atomic_long flows, errors;

static int udp_flow(char tag) {
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0) return -1;
    int ok = connect(s, (struct sockaddr *)&udp_peer, sizeof udp_peer) == 0 && send(s, &tag, 1, 0) == 1;
    close(s);
    return ok ? 0 : -1;
}

static void *placer(void *arg) {
    (void)arg;
    while (!atomic_load(&stop)) {
        if (udp_flow('t') == 0) atomic_fetch_add(&flows, 1);
        else atomic_fetch_add(&errors, 1);
    }
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: PEER_IP UDP_PORT TCP_PORT FORKS\n"); return 2; }
    udp_peer.sin_family = tcp_peer.sin_family = AF_INET;
    inet_pton(AF_INET, argv[1], &udp_peer.sin_addr);
    tcp_peer.sin_addr = udp_peer.sin_addr;
    udp_peer.sin_port = htons(atoi(argv[2]));
    tcp_peer.sin_port = htons(atoi(argv[3]));
    int forks = atoi(argv[4]);

    pthread_t th[2];
    for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, placer, NULL);
    usleep(20000);

    int hung = 0, failed = 0, done = 0;
    for (int i = 0; i < forks && hung < 3; i++) {
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); break; }
        if (pid == 0) {
            int bad = udp_flow('c') != 0;
            int s = socket(AF_INET, SOCK_STREAM, 0);
            if (connect(s, (struct sockaddr *)&tcp_peer, sizeof tcp_peer) != 0) bad = 1;
            close(s);
            _exit(bad);
        }
        double deadline = now() + 5.0;
        int status = 0;
        for (;;) {
            pid_t r = waitpid(pid, &status, WNOHANG);
            if (r == pid) {
                if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) failed++;
                break;
            }
            if (now() > deadline) {
                hung++;
                kill(pid, SIGKILL);
                waitpid(pid, &status, 0);
                break;
            }
            usleep(200);
        }
        done++;
    }
    atomic_store(&stop, 1);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    printf("forks %d hung %d child_failed %d thread_flows %ld thread_errors %ld\n", done, hung, failed,
           atomic_load(&flows), atomic_load(&errors));
    return 0;
}
