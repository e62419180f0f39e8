// SPDX-License-Identifier: MIT OR GPL-2.0
//
// portrange cgroup placement: the shim's promise for programs LD_PRELOAD cannot reach (static,
// Go, io_uring, raw syscall(SYS_connect)). Attached to a cgroup v2 group at connect4 / connect6
// (v4-mapped), it binds every in-scope TCP/UDP connect to a slice IP and a free port of its
// slice before the kernel picks one, and refuses the connect when the slice is full. A
// sockops program releases the TCP race claims; a sendmsg hook refuses what cannot be placed.
//
// Rules (the shim's, see SPEC.md):
// - random port order: a random start and a random stride coprime to the slice size (strides
//   precomputed by userspace), never linear probing;
// - a 4-tuple held by any socket is skipped (bpf_skc_lookup_tcp / bpf_sk_lookup_udp); a TCP
//   TIME_WAIT tuple is taken only when TCP timestamps are on (flag from userspace), an orphaned
//   FIN_WAIT2 never (taking it resets the peer);
// - a claim in an LRU hash keyed by (destination, source, port, protocol) stops two connects
//   racing for one tuple: UDP releases it once the socket is bound (visible to look-ups), TCP at
//   BPF_SOCK_OPS_TCP_CONNECT_CB (the socket is in the established hash); a stale claim (a failed
//   connect) expires after claim_ttl_ms;
// - several slices tried in turn from a random one; exhaustion: EADDRNOTAVAIL (TCP) / EAGAIN
//   (UDP) through bpf_set_retval; never a flow outside the slice: anything unexpected refuses.
//
// Built by build.rs with clang when present (`clang -O2 -g -target bpf -c placement.c`); the
// committed placement.bpf.o is the fallback. Layouts here must match src/bin/portrange/cgroup/.

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define SOL_SOCKET 1
#define SO_REUSEADDR 2
#define EPERM 1
#define EAGAIN 11
#define EADDRNOTAVAIL 99
#define TCP_FIN_WAIT2 5

#define MAX_SLICES 8
#define MAX_STRIDES 16
#define MAX_SKIP 8

#define FLAG_TIME_WAIT_OK 1 /* tcp_timestamps on: an explicit bind may take a TIME_WAIT tuple */

struct slice {
	__u32 ip; /* network order */
	__u16 lo, hi; /* host order */
	__u32 n_strides;
	__u32 strides[MAX_STRIDES]; /* each coprime to hi - lo + 1 and smaller than it */
};

struct prefix {
	__u32 net; /* network order, already masked */
	__u32 mask; /* network order */
};

struct config {
	__u32 n_slices;
	__u32 n_skip;
	__u32 flags;
	__u32 claim_ttl_ms;
	__u16 ephemeral_lo, ephemeral_hi; /* net.ipv4.ip_local_port_range at attach */
	struct slice slices[MAX_SLICES];
	struct prefix skip[MAX_SKIP];
};

enum counter {
	C_PLACED_TCP,
	C_PLACED_UDP,
	C_EXHAUSTED_TCP,
	C_EXHAUSTED_UDP,
	C_PROBES,
	C_HELD,
	C_CLAIMED,
	C_BIND_FAILED,
	C_PASSED_SKIP,
	C_PASSED_BOUND,
	C_PASSED_V6,
	C_REFUSED_UNPLACEABLE,
	C_REFUSED_CONFIG,
	C_MAX,
};

struct claim_key {
	__u32 dst_ip;
	__u32 src_ip;
	__u16 dst_port; /* host order */
	__u16 src_port; /* host order */
	__u32 proto;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

/* Per CPU: a plain increment, no atomic and no shared cache line on the connect path. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct claim_key);
	__type(value, __u64);
} claims SEC(".maps");

/* What the program's own bind() did (cgroup/bind4, bind6; bpf_bind does not run those hooks). */
#define BOUND_PORT 1 /* a port of its choice: left alone, as the shim leaves it */
#define BOUND_ANY 2 /* port 0: the kernel chose one, outside the slice's control */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u32);
} bound SEC(".maps");

/* The kernel's timewait socket, only the field read here (CO-RE: relocated against the
 * running kernel's BTF at load). */
struct inet_timewait_sock {
	volatile unsigned char tw_substate;
} __attribute__((preserve_access_index));
struct tcp_timewait_sock {
	struct inet_timewait_sock tw_sk;
} __attribute__((preserve_access_index));

static __always_inline void count(__u32 c)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &c);
	if (v)
		*v += 1;
}

/* The search state shared with the bpf_loop callback. */
struct search {
	struct bpf_sock_addr *ctx;
	__u64 now;
	__u64 ttl_ns;
	__u32 dst_ip;
	__u32 src_ip;
	__u16 dst_port; /* host order */
	__u16 lo;
	__u32 n;
	__u32 idx;
	__u32 stride;
	__u32 tcp;
	__u32 v6;
	__u32 tw_ok;
	__u32 found;
};

/* Is the 4-tuple (src_ip:port -> dst) held by a socket that a new connect would collide with? */
static __always_inline int held(struct search *st, __u16 port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;

	/* Look-ups take the tuple as an incoming packet would carry it. */
	t.ipv4.saddr = st->dst_ip;
	t.ipv4.sport = bpf_htons(st->dst_port);
	t.ipv4.daddr = st->src_ip;
	t.ipv4.dport = bpf_htons(port);
	if (!st->tcp) {
		sk = bpf_sk_lookup_udp(st->ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return 0;
		bpf_sk_release(sk);
		return 1;
	}
	sk = bpf_skc_lookup_tcp(st->ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	int busy = 1;
	if (sk->state == BPF_TCP_TIME_WAIT && st->tw_ok) {
		struct tcp_timewait_sock *tw = bpf_skc_to_tcp_timewait_sock(sk);
		busy = !tw || tw->tw_sk.tw_substate == TCP_FIN_WAIT2;
	}
	bpf_sk_release(sk);
	return busy;
}

static long probe(__u32 i, void *data)
{
	struct search *st = data;
	__u16 port = st->lo + st->idx;
	__u32 next = st->idx + st->stride;
	st->idx = next >= st->n ? next - st->n : next;

	count(C_PROBES);
	struct claim_key key = {
		.dst_ip = st->dst_ip,
		.src_ip = st->src_ip,
		.dst_port = st->dst_port,
		.src_port = port,
		.proto = st->tcp ? IPPROTO_TCP : IPPROTO_UDP,
	};
	if (bpf_map_update_elem(&claims, &key, &st->now, BPF_NOEXIST)) {
		__u64 *then = bpf_map_lookup_elem(&claims, &key);
		/* Signed: a claim made after this search began is newer than st->now. */
		if (then && (__s64)(st->now - *then) < (__s64)st->ttl_ns) {
			count(C_CLAIMED);
			return 0;
		}
		/* Stale: the connect that claimed it failed long ago. */
		bpf_map_update_elem(&claims, &key, &st->now, BPF_ANY);
	}
	/* Claim first, look second: a holder that released its claim is visible by then (UDP: bound;
	 * TCP: in the established hash), so no two connects can both see the tuple free. */
	if (held(st, port)) {
		bpf_map_delete_elem(&claims, &key);
		count(C_HELD);
		return 0;
	}
	long err;
	if (st->v6) {
		struct sockaddr_in6 sa = {};
		sa.sin6_family = AF_INET6;
		sa.sin6_port = bpf_htons(port);
		sa.sin6_addr.in6_u.u6_addr32[2] = bpf_htonl(0xffff);
		sa.sin6_addr.in6_u.u6_addr32[3] = st->src_ip;
		err = bpf_bind(st->ctx, (struct sockaddr *)&sa, sizeof(sa));
	} else {
		struct sockaddr_in sa = {};
		sa.sin_family = AF_INET;
		sa.sin_port = bpf_htons(port);
		sa.sin_addr.s_addr = st->src_ip;
		err = bpf_bind(st->ctx, (struct sockaddr *)&sa, sizeof(sa));
	}
	if (err) {
		/* A holder without SO_REUSEADDR (an owned port, a listener): try the next port. */
		bpf_map_delete_elem(&claims, &key);
		count(C_BIND_FAILED);
		return 0;
	}
	/* UDP: the bound socket is now visible to bpf_sk_lookup_udp, so the claim has done its
	 * job. TCP: the socket enters the established hash at connect; sockops releases it. */
	if (!st->tcp)
		bpf_map_delete_elem(&claims, &key);
	st->found = 1;
	return 1;
}

static __always_inline int skipped(struct config *cfg, __u32 ip)
{
	for (int i = 0; i < MAX_SKIP; i++) {
		if (i >= cfg->n_skip)
			break;
		if ((ip & cfg->skip[i].mask) == cfg->skip[i].net)
			return 1;
	}
	return 0;
}

static __always_inline int refuse(__u32 counter, int err)
{
	count(counter);
	bpf_set_retval(-err);
	return 0;
}

/* The socket's IPv4 source (the low word of a v4-mapped AF_INET6 one; any other IPv6 source
 * reads as non-zero). Each field read once into a register: the verifier refuses arithmetic on
 * a sock pointer that clang would otherwise offset by family. */
static __always_inline __u32 sock_src_v4(struct bpf_sock *sk)
{
	__u32 family = sk->family, ip4 = sk->src_ip4;
	__u32 a0 = sk->src_ip6[0], a1 = sk->src_ip6[1], a2 = sk->src_ip6[2], a3 = sk->src_ip6[3];
	asm volatile("" : "+r"(ip4), "+r"(a0), "+r"(a1), "+r"(a2), "+r"(a3));
	if (family != AF_INET6)
		return ip4;
	if (a0 == 0 && a1 == 0 && (a2 == 0 || a2 == bpf_htonl(0xffff)))
		return a3;
	return 0xffffffff;
}

static __always_inline int in_slices(struct config *cfg, __u32 ip, __u16 port)
{
	for (int i = 0; i < MAX_SLICES; i++) {
		if (i >= cfg->n_slices)
			break;
		if (cfg->slices[i].ip == ip && port >= cfg->slices[i].lo && port <= cfg->slices[i].hi)
			return 1;
	}
	return 0;
}

/* The socket has a port before this connect/send. Left alone: a port the program chose itself
 * (BOUND_PORT; or, for a socket older than the attach, a port outside the ephemeral range), and a
 * slice port (placed by an earlier connect: a TCP retry, a UDP re-connect — UDP checked for a
 * duplicate tuple first). Refused: a port the kernel chose (autobind at an unconnected send,
 * bind(ip, 0)), which cannot be moved into the slice any more. */
static __always_inline int already_bound(struct bpf_sock_addr *ctx, struct config *cfg, struct bpf_sock *sk,
					 __u32 dst_ip, int tcp)
{
	__u16 port = sk->src_port;
	__u32 src_ip = sock_src_v4(sk);
	if (in_slices(cfg, src_ip, port)) {
		if (!tcp) {
			struct bpf_sock_tuple t = {};
			t.ipv4.saddr = dst_ip;
			t.ipv4.sport = (__u16)ctx->user_port;
			t.ipv4.daddr = src_ip;
			t.ipv4.dport = bpf_htons(port);
			struct bpf_sock *other = bpf_sk_lookup_udp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
			if (other) {
				int dup = other != sk;
				bpf_sk_release(other);
				if (dup)
					return refuse(C_EXHAUSTED_UDP, EAGAIN);
			}
		}
		count(C_PASSED_BOUND);
		return 1;
	}
	__u32 *mark = bpf_sk_storage_get(&bound, sk, 0, 0);
	__u32 how = mark ? *mark : 0;
	if (how == BOUND_PORT || (how == 0 && (port < cfg->ephemeral_lo || port > cfg->ephemeral_hi))) {
		count(C_PASSED_BOUND);
		return 1;
	}
	return refuse(C_REFUSED_UNPLACEABLE, EPERM);
}

static __always_inline int place(struct bpf_sock_addr *ctx, __u32 dst_ip, int v6)
{
	int tcp;
	if (ctx->type == SOCK_STREAM && ctx->protocol == IPPROTO_TCP)
		tcp = 1;
	else if (ctx->type == SOCK_DGRAM && ctx->protocol == IPPROTO_UDP)
		tcp = 0;
	else
		return 1; /* not TCP/UDP (SCTP, MPTCP, ICMP...): out of scope */

	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg || cfg->n_slices == 0 || cfg->n_slices > MAX_SLICES)
		return refuse(C_REFUSED_CONFIG, EPERM);
	if (skipped(cfg, dst_ip)) {
		count(C_PASSED_SKIP);
		return 1;
	}
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return refuse(C_REFUSED_CONFIG, EPERM);
	if (sk->src_port != 0)
		return already_bound(ctx, cfg, sk, dst_ip, tcp);

	int one = 1;
	if (bpf_setsockopt(ctx, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)))
		return refuse(C_REFUSED_CONFIG, EPERM);

	struct search st = {
		.ctx = ctx,
		.now = bpf_ktime_get_ns(),
		.ttl_ns = (__u64)cfg->claim_ttl_ms * 1000000,
		.dst_ip = dst_ip,
		.dst_port = bpf_ntohs((__u16)ctx->user_port),
		.tcp = tcp,
		.v6 = v6,
		.tw_ok = cfg->flags & FLAG_TIME_WAIT_OK,
	};
	__u32 n_slices = cfg->n_slices;
	__u32 first = bpf_get_prandom_u32() % n_slices;
	for (int k = 0; k < MAX_SLICES; k++) {
		if (k >= n_slices)
			break;
		__u32 s = first + k;
		if (s >= n_slices)
			s -= n_slices;
		if (s >= MAX_SLICES)
			break;
		struct slice *sl = &cfg->slices[s];
		__u32 n = (__u32)sl->hi - sl->lo + 1;
		__u32 ns = sl->n_strides;
		if (sl->hi < sl->lo || ns == 0 || ns > MAX_STRIDES)
			return refuse(C_REFUSED_CONFIG, EPERM);
		__u32 r = bpf_get_prandom_u32();
		__u32 si = r % ns;
		/* clang knows si < ns <= 16 and drops a plain check; the verifier does not know. */
		asm volatile("" : "+r"(si));
		si &= MAX_STRIDES - 1;
		st.src_ip = sl->ip;
		st.lo = sl->lo;
		st.n = n;
		st.idx = (r >> 8) % n;
		st.stride = sl->strides[si] % n;
		bpf_loop(n, probe, &st, 0);
		if (st.found) {
			count(tcp ? C_PLACED_TCP : C_PLACED_UDP);
			return 1;
		}
	}
	if (tcp)
		return refuse(C_EXHAUSTED_TCP, EADDRNOTAVAIL);
	return refuse(C_EXHAUSTED_UDP, EAGAIN);
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	return place(ctx, ctx->user_ip4, 0);
}

static __always_inline int v4_mapped(__u32 a0, __u32 a1, __u32 a2)
{
	return a0 == 0 && a1 == 0 && a2 == bpf_htonl(0xffff);
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	if (!v4_mapped(ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2])) {
		/* IPv6 destinations: no IPv6 slices in the cgroup placement. */
		count(C_PASSED_V6);
		return 1;
	}
	return place(ctx, ctx->user_ip6[3], 1);
}

/* An unconnected UDP send. From a socket with no port yet the kernel has already picked one
 * (autobind runs before this hook, and bpf_bind is refused here), so it cannot be placed: refused
 * rather than let it leave from outside the slice (destinations in the skip list pass). Sockets
 * bound to a specific IP (placed ones among them) and ports the program chose pass. */
static __always_inline int send_unconnected(struct bpf_sock_addr *ctx, __u32 dst_ip)
{
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	if (!cfg)
		return refuse(C_REFUSED_CONFIG, EPERM);
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return refuse(C_REFUSED_CONFIG, EPERM);
	if (sock_src_v4(sk) != 0)
		return 1; /* bound to an address: placed, or the program's own choice */
	if (skipped(cfg, dst_ip)) {
		count(C_PASSED_SKIP);
		return 1;
	}
	return already_bound(ctx, cfg, sk, dst_ip, 0);
}

SEC("cgroup/sendmsg4")
int sendmsg4(struct bpf_sock_addr *ctx)
{
	return send_unconnected(ctx, ctx->user_ip4);
}

SEC("cgroup/sendmsg6")
int sendmsg6(struct bpf_sock_addr *ctx)
{
	if (!v4_mapped(ctx->user_ip6[0], ctx->user_ip6[1], ctx->user_ip6[2]))
		return 1;
	return send_unconnected(ctx, ctx->user_ip6[3]);
}

static __always_inline int on_bind(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	__u32 *mark = bpf_sk_storage_get(&bound, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (mark)
		*mark = ctx->user_port ? BOUND_PORT : BOUND_ANY;
	return 1;
}

SEC("cgroup/bind4")
int bind4(struct bpf_sock_addr *ctx)
{
	return on_bind(ctx);
}

SEC("cgroup/bind6")
int bind6(struct bpf_sock_addr *ctx)
{
	return on_bind(ctx);
}

/* The TCP socket is in the established hash (look-ups see it): its claim is no longer needed. */
SEC("sockops")
int release_claim(struct bpf_sock_ops *ops)
{
	if (ops->op != BPF_SOCK_OPS_TCP_CONNECT_CB)
		return 1;
	/* Every field read once, unconditionally: the verifier refuses a ctx pointer that clang
	 * offsets in one branch and dereferences after the join. */
	__u32 family = ops->family;
	__u32 r4 = ops->remote_ip4, l4 = ops->local_ip4;
	__u32 r6_0 = ops->remote_ip6[0], r6_1 = ops->remote_ip6[1], r6_2 = ops->remote_ip6[2];
	__u32 r6_3 = ops->remote_ip6[3], l6_3 = ops->local_ip6[3];
	struct claim_key key = { .proto = IPPROTO_TCP };
	if (family == AF_INET) {
		key.dst_ip = r4;
		key.src_ip = l4;
	} else if (family == AF_INET6 && v4_mapped(r6_0, r6_1, r6_2)) {
		key.dst_ip = r6_3;
		key.src_ip = l6_3;
	} else {
		return 1;
	}
	/* remote_port is network order, shifted into the upper half on some kernels. */
	__u32 rp = ops->remote_port;
	key.dst_port = rp > 0xffff ? (__u16)bpf_ntohl(rp) : bpf_ntohs((__u16)rp);
	key.src_port = (__u16)ops->local_port;
	bpf_map_delete_elem(&claims, &key);
	return 1;
}

char _license[] SEC("license") = "Dual MIT/GPL";
