// A statically linked test client (gcc -static) for the cgroup placement: LD_PRELOAD cannot
// reach it. Every connect alternates libc connect() and raw syscall(SYS_connect).
//
//   client serve IP PORT...               TCP+UDP recorder: "peer tcp|udp PORT SRCIP:SRCPORT",
//                                         echoes UDP datagrams; "ready" once listening; closes
//                                         a TCP connection when the client does, except on 7003
//   client tcp DST PORT:N[,PORT:N...]     N TCP connects per destination port, all held open:
//                                         "ok tcp PORT LOCALIP:LOCALPORT" / "err tcp PORT ERRNO"
//   client udp DST PORT:N[,...]           the same with connected UDP sockets (one datagram each)
//   client tcp6|udp6 DST PORT:N[,...]     the same from AF_INET6 sockets to ::ffff:DST (v4-mapped)
//   client sendto DST PORT [LPORT]        one unconnected sendto from a UDP socket, unbound or
//                                         bound to 0.0.0.0:LPORT: "ok sendto PORT" / "err sendto PORT ERRNO"
//   client bind0 tcp|udp DST PORT         bind(0.0.0.0, 0), then connect: "ok|err bind0 ..."
//   client noport DST PORT SRCIP          IP_BIND_ADDRESS_NO_PORT + bind(SRCIP, 0), then TCP connect
//   client uring DST PORT:N[,...]         TCP connects submitted through io_uring (IORING_OP_CONNECT,
//                                         raw syscalls, no liburing), held open: as `tcp`
//   client race tcp|udp DST PORT COUNT WINDOW
//                                         COUNT connects, WINDOW held at once (TCP closed with
//                                         RST); per socket "sock LOCALPORT OPEN_NS CLOSE_NS";
//                                         at the end "race ok=N fail=N"
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/io_uring.h>
#include <sys/mman.h>

/* One io_uring, one connect at a time: submit IORING_OP_CONNECT, wait for its completion. */
static int uring_connect(int fd, struct sockaddr_in *sa)
{
	static int ring = -1;
	static struct io_uring_params p;
	static unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
	static struct io_uring_sqe *sqes;
	static struct io_uring_cqe *cqes;
	if (ring < 0) {
		memset(&p, 0, sizeof(p));
		ring = syscall(__NR_io_uring_setup, 4, &p);
		if (ring < 0)
			return -errno;
		size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
		size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
		char *sq = mmap(0, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED, ring, IORING_OFF_SQ_RING);
		char *cq = mmap(0, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED, ring, IORING_OFF_CQ_RING);
		sqes = mmap(0, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE, MAP_SHARED, ring,
			    IORING_OFF_SQES);
		if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED)
			return -ENOMEM;
		sq_tail = (unsigned *)(sq + p.sq_off.tail);
		sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
		sq_array = (unsigned *)(sq + p.sq_off.array);
		cq_head = (unsigned *)(cq + p.cq_off.head);
		cq_tail = (unsigned *)(cq + p.cq_off.tail);
		cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
		cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
	}
	unsigned tail = *sq_tail, idx = tail & *sq_mask;
	struct io_uring_sqe *sqe = &sqes[idx];
	memset(sqe, 0, sizeof(*sqe));
	sqe->opcode = IORING_OP_CONNECT;
	sqe->fd = fd;
	sqe->addr = (unsigned long)sa;
	sqe->off = sizeof(*sa);
	sq_array[idx] = idx;
	__atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0) < 0)
		return -errno;
	unsigned head = *cq_head;
	while (head == __atomic_load_n(cq_tail, __ATOMIC_ACQUIRE))
		;
	int res = cqes[head & *cq_mask].res;
	__atomic_store_n(cq_head, head + 1, __ATOMIC_RELEASE);
	return res;
}

static int do_connect(int fd, struct sockaddr_in *sa, int n)
{
	if (n % 2)
		return syscall(SYS_connect, fd, (struct sockaddr *)sa, sizeof(*sa));
	return connect(fd, (struct sockaddr *)sa, sizeof(*sa));
}

static int do_connect6(int fd, struct sockaddr_in *sa, int n)
{
	struct sockaddr_in6 s6 = { .sin6_family = AF_INET6, .sin6_port = sa->sin_port };
	s6.sin6_addr.s6_addr[10] = 0xff;
	s6.sin6_addr.s6_addr[11] = 0xff;
	memcpy(&s6.sin6_addr.s6_addr[12], &sa->sin_addr, 4);
	if (n % 2)
		return syscall(SYS_connect, fd, (struct sockaddr *)&s6, sizeof(s6));
	return connect(fd, (struct sockaddr *)&s6, sizeof(s6));
}

static unsigned long long now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static void local(int fd, char *buf, size_t len)
{
	struct sockaddr_in6 sa;
	socklen_t sl = sizeof(sa);
	getsockname(fd, (struct sockaddr *)&sa, &sl);
	char ip[INET6_ADDRSTRLEN];
	if (sa.sin6_family == AF_INET6) {
		inet_ntop(AF_INET6, &sa.sin6_addr, ip, sizeof(ip));
		snprintf(buf, len, "[%s]:%u", ip, ntohs(sa.sin6_port));
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&sa;
		inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
		snprintf(buf, len, "%s:%u", ip, ntohs(s4->sin_port));
	}
}

static int serve(const char *ip, int nports, char **ports)
{
	struct pollfd pfd[4096];
	int kind[4096], lport[4096], n = 0;
	for (int i = 0; i < nports; i++) {
		for (int t = 0; t < 2; t++) {
			int fd = socket(AF_INET, t ? SOCK_DGRAM : SOCK_STREAM, 0);
			int one = 1;
			setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
			struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(atoi(ports[i])) };
			inet_pton(AF_INET, ip, &sa.sin_addr);
			if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || (!t && listen(fd, 4096))) {
				perror("serve: bind/listen");
				return 1;
			}
			pfd[n] = (struct pollfd){ .fd = fd, .events = POLLIN };
			kind[n] = t ? 1 : 0; /* 0 listener, 1 udp, 2 accepted */
			lport[n++] = atoi(ports[i]);
		}
	}
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		if (poll(pfd, n, -1) < 0)
			continue;
		for (int i = 0; i < n; i++) {
			if (!(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			struct sockaddr_in peer;
			socklen_t pl = sizeof(peer);
			char ip4[INET_ADDRSTRLEN], buf[512];
			if (kind[i] == 0) {
				int c = accept(pfd[i].fd, (struct sockaddr *)&peer, &pl);
				if (c < 0)
					continue;
				inet_ntop(AF_INET, &peer.sin_addr, ip4, sizeof(ip4));
				printf("peer tcp %d %s:%u\n", lport[i], ip4, ntohs(peer.sin_port));
				fflush(stdout);
				if (n < 4096) {
					pfd[n] = (struct pollfd){ .fd = c, .events = POLLIN };
					kind[n] = 2;
					lport[n++] = lport[i];
				} else {
					close(c);
				}
			} else if (kind[i] == 1) {
				ssize_t r = recvfrom(pfd[i].fd, buf, sizeof(buf), 0, (struct sockaddr *)&peer, &pl);
				if (r < 0)
					continue;
				inet_ntop(AF_INET, &peer.sin_addr, ip4, sizeof(ip4));
				printf("peer udp %d %s:%u\n", lport[i], ip4, ntohs(peer.sin_port));
				fflush(stdout);
				sendto(pfd[i].fd, buf, r, 0, (struct sockaddr *)&peer, pl);
			} else if (read(pfd[i].fd, buf, sizeof(buf)) <= 0) {
				/* Port 7003 never closes its side: the client's tuple stays FIN_WAIT2. */
				if (lport[i] != 7003)
					close(pfd[i].fd);
				pfd[i] = pfd[--n];
				kind[i] = kind[n];
				lport[i] = lport[n];
				i--;
			}
		}
	}
}

static int use_uring;

static int flows(int udp, int v6, const char *dst, char *spec)
{
	int attempt = 0, failed = 0;
	for (char *item = strtok(spec, ","); item; item = strtok(NULL, ",")) {
		int port = atoi(item), count = atoi(strchr(item, ':') ? strchr(item, ':') + 1 : "1");
		struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
		inet_pton(AF_INET, dst, &sa.sin_addr);
		for (int k = 0; k < count; k++) {
			int fd = socket(v6 ? AF_INET6 : AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
			int r;
			if (use_uring) {
				r = uring_connect(fd, &sa);
				if (r < 0) {
					errno = -r;
					r = -1;
				}
			} else {
				r = v6 ? do_connect6(fd, &sa, attempt++) : do_connect(fd, &sa, attempt++);
			}
			if (r) {
				printf("err %s %d %d\n", udp ? "udp" : "tcp", port, errno);
				failed++;
				close(fd);
				continue;
			}
			if (udp)
				send(fd, "hi", 2, 0);
			char l[64];
			local(fd, l, sizeof(l));
			printf("ok %s %d %s\n", udp ? "udp" : "tcp", port, l);
			/* held open until exit */
		}
	}
	fflush(stdout);
	usleep(200000); /* let the server log every flow while they are open */
	return 0;
}

static int race(int udp, const char *dst, int port, int count, int window)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, dst, &sa.sin_addr);
	int *fds = calloc(window, sizeof(int));
	unsigned long long *opened = calloc(window, sizeof(*opened));
	int *ports = calloc(window, sizeof(int));
	int ok = 0, fail = 0;
	for (int i = 0; i < window; i++)
		fds[i] = -1;
	for (int i = 0; i < count; i++) {
		int slot = i % window;
		if (fds[slot] >= 0) {
			unsigned long long closed = now_ns();
			if (!udp) {
				struct linger lg = { 1, 0 };
				setsockopt(fds[slot], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
			}
			close(fds[slot]);
			printf("sock %d %llu %llu\n", ports[slot], opened[slot], closed);
			fds[slot] = -1;
		}
		int fd = socket(AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
		if (do_connect(fd, &sa, i)) {
			fprintf(stderr, "race: connect: %s\n", strerror(errno));
			fail++;
			close(fd);
			continue;
		}
		struct sockaddr_in l;
		socklen_t ll = sizeof(l);
		getsockname(fd, (struct sockaddr *)&l, &ll);
		fds[slot] = fd;
		ports[slot] = ntohs(l.sin_port);
		opened[slot] = now_ns();
		ok++;
	}
	for (int slot = 0; slot < window; slot++)
		if (fds[slot] >= 0) {
			printf("sock %d %llu %llu\n", ports[slot], opened[slot], now_ns());
			close(fds[slot]);
		}
	printf("race ok=%d fail=%d\n", ok, fail);
	return 0;
}

static int send_unbound(const char *dst, int port, int lport)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, dst, &sa.sin_addr);
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (lport) {
		struct sockaddr_in any = { .sin_family = AF_INET, .sin_port = htons(lport) };
		if (bind(fd, (struct sockaddr *)&any, sizeof(any)))
			perror("bind");
	}
	if (sendto(fd, "hi", 2, 0, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		printf("err sendto %d %d\n", port, errno);
	else
		printf("ok sendto %d\n", port);
	fflush(stdout);
	usleep(100000);
	return 0;
}

static int bound_first(int udp, const char *dst, int port, const char *src)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	inet_pton(AF_INET, dst, &sa.sin_addr);
	int fd = socket(AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
	struct sockaddr_in me = { .sin_family = AF_INET };
	const char *what = "bind0";
	if (src) {
		int one = 1;
		setsockopt(fd, IPPROTO_IP, 24 /* IP_BIND_ADDRESS_NO_PORT */, &one, sizeof(one));
		inet_pton(AF_INET, src, &me.sin_addr);
		what = "noport";
	}
	if (bind(fd, (struct sockaddr *)&me, sizeof(me)))
		perror("bind");
	if (do_connect(fd, &sa, 0)) {
		printf("err %s %d %d\n", what, port, errno);
	} else {
		if (udp)
			send(fd, "hi", 2, 0);
		char l[64];
		local(fd, l, sizeof(l));
		printf("ok %s %d %s\n", what, port, l);
	}
	fflush(stdout);
	usleep(100000);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 4 && !strcmp(argv[1], "serve"))
		return serve(argv[2], argc - 3, argv + 3);
	if (argc == 4 && !strcmp(argv[1], "uring")) {
		use_uring = 1;
		return flows(0, 0, argv[2], argv[3]);
	}
	if (argc == 4 && (!strncmp(argv[1], "tcp", 3) || !strncmp(argv[1], "udp", 3)))
		return flows(argv[1][0] == 'u', argv[1][3] == '6', argv[2], argv[3]);
	if ((argc == 4 || argc == 5) && !strcmp(argv[1], "sendto"))
		return send_unbound(argv[2], atoi(argv[3]), argc == 5 ? atoi(argv[4]) : 0);
	if (argc == 5 && !strcmp(argv[1], "bind0"))
		return bound_first(!strcmp(argv[2], "udp"), argv[3], atoi(argv[4]), NULL);
	if (argc == 5 && !strcmp(argv[1], "noport"))
		return bound_first(0, argv[2], atoi(argv[3]), argv[4]);
	if (argc == 7 && !strcmp(argv[1], "race"))
		return race(!strcmp(argv[2], "udp"), argv[3], atoi(argv[4]), atoi(argv[5]), atoi(argv[6]));
	fprintf(stderr, "usage: see client.c\n");
	return 2;
}
