//! A socket's life as the shim sees it: one explicit [`Phase`] plus a few sticky facts, packed
//! in one word per fd (stored by `fdtable`, lock-free, checked against the socket's identity).
//! Every change is a named transition here ([`State`]'s methods, pure, unit-tested); the calls
//! in `calls/*` ask for transitions with [`go`] and never touch bits.
//!
//! ```text
//!                 bind(wildcard|SLICE_IP, 0)               connect/send placed
//!   Fresh ───────────────defer_bind──────────▶ DeferredBind ─────placed────▶ Placed{Owned|Shared}
//!     │ ▲                                          │   │                         │      │
//!     │ └──bound_by_kernel / deferred_bind_failed──┘   └─bound_in_slice─▶ Placed{Owned}  │
//!     │ └──attempt_failed (from DeferredBind)                                        │      │
//!     │ └──────────────── disconnect (TCP, owned: the kernel released its port) ─────┘      │
//!     ├─settle─▶ Settled (sends left alone; defer_bind / placed still possible)             │
//!     └─placed / bound_in_slice─▶ Placed        Placed{Shared} ─disconnect─▶ Disconnected ─placed─▶ Placed
//! ```

use libc::c_int;

/// Who owns a placed socket's port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// The socket's own (a bind in the slice, a first send, a TCP connect's 4-tuple).
    Owned,
    /// A UDP port shared with other peers' sockets (cookie-checked connect): a connect to
    /// another peer must be checked again.
    Shared,
}

/// Where the socket is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Nothing decided yet (also: an attempt failed, a deferred bind was carried out at the
    /// wildcard, a placed TCP socket was disconnected).
    Fresh,
    /// The program called bind(wildcard, 0) or (TCP) bind(SLICE_IP, 0): the port waits for
    /// connect / first send (placed) or listen / getsockname (carried out).
    DeferredBind,
    /// The send path left the socket alone for good (out of scope, not ours, TCP sendto).
    Settled,
    /// Bound inside a slice by the shim.
    Placed(Port),
    /// A UDP socket placed on a shared port, then disconnected (connect AF_UNSPEC): its next
    /// connect or send is placed afresh.
    Disconnected,
}

/// Sticky facts beside the phase (bits above [`PHASE_BITS`]).
pub mod fact {
    /// An AF_INET/AF_INET6 TCP or UDP socket created by socket() in this process (its protocol
    /// is [`TCP`] or UDP): no SO_PROTOCOL look-up. For a datagram socket, a port it holds while
    /// the program never bound it (`PROG_BOUND`) is the kernel's automatic one.
    pub const CREATED_HERE: u64 = 1 << 3;
    /// The program bound the socket to a port itself.
    pub const PROG_BOUND: u64 = 1 << 4;
    /// The local address is not the program's choice: the shim bound it (an attempt) or the
    /// kernel chose it (a deferred wildcard bind carried out). Its IP is not a pin.
    pub const NOT_PROGRAMS: u64 = 1 << 5;
    /// The shim changed IP_BIND_ADDRESS_NO_PORT; `PROG_NO_PORT` is the program's own value.
    pub const SHIM_NO_PORT: u64 = 1 << 6;
    pub const PROG_NO_PORT: u64 = 1 << 7;
    /// The shim changed IP_LOCAL_PORT_RANGE (the program's value is the entry's range word).
    pub const SHIM_RANGE: u64 = 1 << 8;
    /// The shim changed SO_REUSEADDR; `PROG_REUSEADDR` is the program's own value.
    pub const SHIM_REUSEADDR: u64 = 1 << 9;
    pub const PROG_REUSEADDR: u64 = 1 << 10;
    /// Any option the shim changed.
    pub const SHIM_OPTS: u64 = SHIM_NO_PORT | SHIM_RANGE | SHIM_REUSEADDR;
    /// With `CREATED_HERE`: a TCP socket (without: UDP).
    pub const TCP: u64 = 1 << 11;
    /// With `CREATED_HERE`: born AF_INET6 (without: AF_INET; recorded for TCP).
    pub const V6: u64 = 1 << 12;
    /// With `CREATED_HERE`: nothing the shim passed on has touched the socket's address since
    /// socket() — no bind, listen or connect it left alone, no dup (a sibling fd's calls are not
    /// seen here). While its phase is also `Fresh` (nothing of the shim's held), its local
    /// address is the wildcard with port 0 and needs no getsockname. What no hook sees (a bind
    /// through syscall(), or by another process after fork) is caught by the placement's own
    /// bind (EINVAL: [`super::State::found_bound`]).
    pub const UNTOUCHED: u64 = 1 << 13;
}

const PHASE_BITS: u64 = 0b111;

/// The options the shim manages, for [`State::program_set`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Managed {
    NoPort,
    ReuseAddr,
}

/// Phase and facts of one socket (0 = a socket the shim knows nothing of: `Fresh`, no facts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State(u64);

impl State {
    pub const fn from_word(w: u64) -> State {
        State(w)
    }

    #[cfg_attr(test, allow(dead_code))]
    pub const fn word(self) -> u64 {
        self.0
    }

    pub fn phase(self) -> Phase {
        match self.0 & PHASE_BITS {
            1 => Phase::DeferredBind,
            2 => Phase::Settled,
            3 => Phase::Placed(Port::Owned),
            4 => Phase::Placed(Port::Shared),
            5 => Phase::Disconnected,
            _ => Phase::Fresh,
        }
    }

    fn with_phase(self, p: Phase) -> State {
        let code = match p {
            Phase::Fresh => 0,
            Phase::DeferredBind => 1,
            Phase::Settled => 2,
            Phase::Placed(Port::Owned) => 3,
            Phase::Placed(Port::Shared) => 4,
            Phase::Disconnected => 5,
        };
        State(self.0 & !PHASE_BITS | code)
    }

    pub fn has(self, f: u64) -> bool {
        self.0 & f != 0
    }

    fn plus(self, f: u64) -> State {
        State(self.0 | f)
    }

    // ---- queries ----

    /// Bound inside a slice by the shim (a disconnected shared socket still holds its port).
    pub fn placed(self) -> bool {
        matches!(self.phase(), Phase::Placed(_) | Phase::Disconnected)
    }

    /// Sends that name an address need no look (placed and connected, or left alone).
    pub fn sends_settled(self) -> bool {
        matches!(self.phase(), Phase::Placed(_) | Phase::Settled)
    }

    pub fn deferred(self) -> bool {
        self.phase() == Phase::DeferredBind
    }

    /// Bound as far as the program knows (a second bind gets EINVAL).
    pub fn bound_for_program(self) -> bool {
        self.deferred() || self.placed()
    }

    /// Its port is shared with other peers' sockets.
    pub fn shared_port(self) -> bool {
        matches!(self.phase(), Phase::Placed(Port::Shared) | Phase::Disconnected)
    }

    pub fn disconnected(self) -> bool {
        self.phase() == Phase::Disconnected
    }

    /// Created here and never bound by the program: a port it holds is the kernel's automatic one.
    pub fn never_bound_by_program(self) -> bool {
        self.has(fact::CREATED_HERE) && !self.has(fact::PROG_BOUND)
    }

    /// The protocol the socket was born with, if socket() in this process recorded it
    /// (AF_INET/AF_INET6 sockets of protocol 0, IPPROTO_UDP or IPPROTO_TCP: see
    /// `fact::CREATED_HERE`).
    pub fn born_proto(self) -> Option<crate::scope::Proto> {
        use crate::scope::Proto;
        self.has(fact::CREATED_HERE).then_some(if self.has(fact::TCP) { Proto::Tcp } else { Proto::Udp })
    }

    /// A TCP socket born here whose address nothing has touched, holding nothing of the shim's:
    /// its family, and that it is unbound (wildcard, port 0), are known without a look.
    /// `Some(family)` then.
    pub fn untouched_tcp(self) -> Option<c_int> {
        let born = fact::CREATED_HERE | fact::TCP | fact::UNTOUCHED;
        (self.0 & born == born
            && self.phase() == Phase::Fresh
            && !self.has(fact::PROG_BOUND | fact::NOT_PROGRAMS))
        .then_some(if self.has(fact::V6) { libc::AF_INET6 } else { libc::AF_INET })
    }

    /// A UDP socket born here whose address nothing the hooks saw has touched, holding nothing of
    /// the shim's: its family, and that it is unbound, are taken from its birth (a port the
    /// kernel gave it behind the hooks' back — a failed write() autobinds — is found by the
    /// placement's own bind: EINVAL, then a look). `Some(family)` then.
    pub fn untouched_udp(self) -> Option<c_int> {
        let born = fact::CREATED_HERE | fact::UNTOUCHED;
        (self.0 & born == born
            && !self.has(fact::TCP)
            && self.phase() == Phase::Fresh
            && !self.has(fact::PROG_BOUND | fact::NOT_PROGRAMS))
        .then_some(if self.has(fact::V6) { libc::AF_INET6 } else { libc::AF_INET })
    }

    /// Does a dup's number need this state (see `fdtable::duped`)? Not when it says no more than
    /// a TCP birth (protocol and family: a look finds them again); a UDP birth is kept (a port
    /// its socket holds unbound by the program is the kernel's, which a look cannot tell).
    pub fn worth_a_copy(self) -> bool {
        let birth = fact::CREATED_HERE | fact::TCP | fact::V6 | fact::UNTOUCHED;
        !(self.has(fact::TCP) && self.0 & !birth == 0)
    }

    /// The program's own value of a managed option the shim changed (`None`: unchanged, the
    /// kernel's answer is the program's).
    pub fn program_value(self, m: Managed) -> Option<bool> {
        let (shim, prog) = match m {
            Managed::NoPort => (fact::SHIM_NO_PORT, fact::PROG_NO_PORT),
            Managed::ReuseAddr => (fact::SHIM_REUSEADDR, fact::PROG_REUSEADDR),
        };
        self.has(shim).then(|| self.has(prog))
    }

    // ---- transitions ----

    /// socket() made a datagram socket (AF_INET6 if `v6`) in this process: unbound, untouched.
    pub fn born_udp(self, v6: bool) -> State {
        self.plus(fact::CREATED_HERE | fact::UNTOUCHED | if v6 { fact::V6 } else { 0 })
    }

    /// socket() made a TCP socket (AF_INET6 if `v6`) in this process: unbound, untouched.
    pub fn born_tcp(self, v6: bool) -> State {
        self.plus(fact::CREATED_HERE | fact::TCP | fact::UNTOUCHED | if v6 { fact::V6 } else { 0 })
    }

    /// The program bound, listened, connected past the shim, or made a dup of the socket: its
    /// address is no longer known from its birth (the next connect looks it up).
    pub fn touched(self) -> State {
        State(self.0 & !fact::UNTOUCHED)
    }

    /// A placement that took the socket as untouched found it bound after all (its bind got
    /// EINVAL: bound or connected behind the hooks' back — syscall(), another process after
    /// fork): the shim put the program's own option values back; from now on the socket is
    /// looked at as one from before the shim loaded (its protocol is still known).
    pub fn found_bound(self) -> State {
        State(self.0 & !(fact::UNTOUCHED | fact::SHIM_OPTS))
    }

    /// The program bound the socket to a port of its choosing.
    pub fn program_bound(self) -> State {
        self.plus(fact::PROG_BOUND)
    }

    /// bind(wildcard, 0) withheld: Fresh / Settled → DeferredBind (a bound socket's bind is
    /// refused before this; it stays as it is).
    pub fn defer_bind(self) -> State {
        match self.phase() {
            Phase::Fresh | Phase::Settled => self.with_phase(Phase::DeferredBind),
            _ => self,
        }
    }

    /// TCP bind(SLICE_IP, 0): only the IP is bound, with IP_BIND_ADDRESS_NO_PORT set on the
    /// program's behalf (its own value was 0); the port waits as for [`Self::defer_bind`].
    pub fn defer_slice_bind(self) -> State {
        State(self.defer_bind().0 & !fact::PROG_NO_PORT | fact::SHIM_NO_PORT)
    }

    /// A port of the socket's slices taken at bind time (UDP bind(SLICE_IP, 0), or a deferred
    /// bind(SLICE_IP, 0) carried out): → Placed{Owned}.
    pub fn bound_in_slice(self) -> State {
        self.with_phase(Phase::Placed(Port::Owned))
    }

    /// A deferred bind(SLICE_IP, 0) could not get a port (the slices are full): DeferredBind →
    /// Fresh (the socket holds the IP, no port).
    pub fn deferred_bind_failed(self) -> State {
        match self.phase() {
            Phase::DeferredBind => self.with_phase(Phase::Fresh),
            _ => self,
        }
    }

    /// A deferred bind(wildcard, 0) was carried out: the kernel chose the port (not the program).
    pub fn bound_by_kernel(self) -> State {
        self.deferred_bind_failed().plus(fact::NOT_PROGRAMS)
    }

    /// The send path left the socket alone: Fresh → Settled (a placed or deferred socket keeps
    /// its phase: placed already counts as settled; a deferred one is looked at again).
    pub fn settle(self) -> State {
        match self.phase() {
            Phase::Fresh => self.with_phase(Phase::Settled),
            _ => self,
        }
    }

    /// A placement succeeded: → Placed{port} from any phase (a swap keeps the entry of the
    /// socket it replaced; a disconnected socket is connected again). Its address is the shim's.
    pub fn placed_at(self, port: Port) -> State {
        self.with_phase(Phase::Placed(port)).plus(fact::NOT_PROGRAMS)
    }

    /// A placement failed or found no free port: the socket may hold an address of ours (not a
    /// pin), a deferred bind is gone (DeferredBind → Fresh); a placed socket keeps its phase.
    pub fn attempt_failed(self) -> State {
        self.deferred_bind_failed().plus(fact::NOT_PROGRAMS)
    }

    /// connect(AF_UNSPEC) on a socket on a shared port: → Disconnected.
    pub fn disconnect_shared(self) -> State {
        if self.shared_port() {
            self.with_phase(Phase::Disconnected)
        } else {
            self
        }
    }

    /// connect(AF_UNSPEC) on a placed TCP socket with its own port: the kernel released the port
    /// it chose, so the next connect is placed again: Placed{Owned} → Fresh.
    pub fn disconnect_owned(self) -> State {
        match self.phase() {
            Phase::Placed(Port::Owned) => self.with_phase(Phase::Fresh),
            _ => self,
        }
    }

    /// The shim changed these options (`fact::SHIM_*`) on the socket.
    pub fn shim_set(self, opts: u64) -> State {
        self.plus(opts & fact::SHIM_OPTS)
    }

    /// The shim put the program's own IP_BIND_ADDRESS_NO_PORT and IP_LOCAL_PORT_RANGE back.
    pub fn options_restored(self) -> State {
        State(self.0 & !(fact::SHIM_NO_PORT | fact::SHIM_RANGE))
    }

    /// The program set a managed option to `on`.
    pub fn program_set(self, m: Managed, on: bool) -> State {
        let b = match m {
            Managed::NoPort => fact::PROG_NO_PORT,
            Managed::ReuseAddr => fact::PROG_REUSEADDR,
        };
        State(if on { self.0 | b } else { self.0 & !b })
    }
}

/// What must happen to a socket before this process execs (or starts a program that inherits
/// it), so that the new program sees what the kernel would show (issue 9 case 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BeforeExec {
    Nothing,
    /// A deferred bind lives only in this process's memory: carry it out, as getsockname would.
    Materialize,
    /// The port is chosen, and the shim's IP_BIND_ADDRESS_NO_PORT / IP_LOCAL_PORT_RANGE are still
    /// on the socket (this process answers getsockopt from its record): put the program's back.
    /// Only once placed: a socket in any other phase may be in the middle of a placement on
    /// another thread, whose connect needs the shim's values.
    RestoreOptions,
}

impl State {
    pub fn before_exec(self) -> BeforeExec {
        if self.deferred() {
            BeforeExec::Materialize
        } else if self.placed() && self.has(fact::SHIM_NO_PORT | fact::SHIM_RANGE) {
            BeforeExec::RestoreOptions
        } else {
            BeforeExec::Nothing
        }
    }
}

/// The state recorded for socket `ino` at `fd` (`State::default()` if none, or stale).
pub fn of(fd: c_int, ino: u64) -> State {
    State(crate::fdtable::word(fd, ino))
}

/// Apply transition `t` to whatever socket `fd`'s entry describes, without a look-up (atomics
/// only): for transitions that only drop facts, harmless on a stale entry (it reads as unknown
/// for any other socket anyway).
pub fn go_unchecked(fd: c_int, t: impl Fn(State) -> State) {
    crate::fdtable::modify_unchecked(fd, |w| t(State(w)).0);
}

/// Apply transition `t` to socket `ino` at `fd` (a stale entry is reset first).
pub fn go(fd: c_int, ino: u64, t: impl Fn(State) -> State) {
    crate::fdtable::modify(fd, ino, |w| {
        let next = t(State(w));
        if next.0 & fact::SHIM_OPTS & !w != 0 && !SHIM_CHANGED.load(Relaxed) {
            SHIM_CHANGED.store(true, Relaxed);
        }
        if enters_exec_work(State(w), next) {
            // A retried update counts twice: the count is an upper bound.
            EXEC_PENDING.fetch_add(1, Relaxed);
        }
        next.0
    });
}

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
static SHIM_CHANGED: AtomicBool = AtomicBool::new(false);
/// Sockets that may need work before an exec ([`State::before_exec`]): raised by every
/// transition into such a state, lowered only by the pass before an exec (`exec.rs`), to the
/// number it left pending. Never below the truth (entries copied by a dup come from a counted
/// one); 0 means an exec has nothing to do.
static EXEC_PENDING: AtomicUsize = AtomicUsize::new(0);

/// A transition that gives the socket (new) work before an exec: counted.
fn enters_exec_work(old: State, new: State) -> bool {
    let work = new.before_exec();
    work != BeforeExec::Nothing && work != old.before_exec()
}

/// Sockets that may need work before an exec (0: none; one atomic load).
pub fn exec_pending() -> usize {
    EXEC_PENDING.load(Relaxed)
}

/// The pass before an exec read `seen`, and left `left` sockets pending (close-on-exec ones).
/// Unless a transition counted meanwhile, the count becomes `left`.
pub fn exec_swept(seen: usize, left: usize) {
    let _ = EXEC_PENDING.compare_exchange(seen, left, Relaxed, Relaxed);
}

/// Has the shim changed a managed option (SO_REUSEADDR, IP_BIND_ADDRESS_NO_PORT,
/// IP_LOCAL_PORT_RANGE) on any socket of this process? Until it has, getsockopt of those options
/// needs no look-up at all (one atomic load).
#[cfg_attr(test, allow(dead_code))]
pub fn shim_changed_any() -> bool {
    SHIM_CHANGED.load(Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Phase::*;

    const ALL: [Phase; 6] =
        [Fresh, DeferredBind, Settled, Placed(Port::Owned), Placed(Port::Shared), Disconnected];
    /// Every phase, bare and with every fact set.
    fn all() -> impl Iterator<Item = State> {
        ALL.into_iter()
            .flat_map(|p| [State(0).with_phase(p), State(!PHASE_BITS & ((1 << 14) - 1)).with_phase(p)])
    }

    /// `t` maps each phase as `expect` says and never touches facts outside `facts_set` /
    /// `facts_cleared`.
    fn check(t: fn(State) -> State, expect: fn(Phase) -> Phase, set: u64, cleared: u64) {
        for s in all() {
            let n = t(s);
            assert_eq!(n.phase(), expect(s.phase()), "{s:?}");
            assert_eq!(n.0 & !PHASE_BITS, (s.0 & !PHASE_BITS | set) & !cleared, "facts of {s:?}");
        }
    }

    #[test]
    fn phases_round_trip_through_the_word() {
        for p in ALL {
            assert_eq!(State(fact::NOT_PROGRAMS).with_phase(p).phase(), p);
        }
        assert_eq!(State::default().phase(), Fresh, "an unknown socket is fresh");
    }

    #[test]
    fn born_udp_and_program_bound_only_add_facts() {
        check(|s| s.born_udp(false), |p| p, fact::CREATED_HERE | fact::UNTOUCHED, 0);
        check(|s| s.born_udp(true), |p| p, fact::CREATED_HERE | fact::UNTOUCHED | fact::V6, 0);
        check(State::program_bound, |p| p, fact::PROG_BOUND, 0);
        let s = State::default().born_udp(false);
        assert!(s.never_bound_by_program());
        assert_eq!(s.born_proto(), Some(crate::scope::Proto::Udp));
        assert_eq!(State::default().born_proto(), None, "unknown: looked up");
        assert!(!s.program_bound().never_bound_by_program());
    }

    #[test]
    fn born_tcp_records_protocol_family_and_untouched() {
        check(|s| s.born_tcp(false), |p| p, fact::CREATED_HERE | fact::TCP | fact::UNTOUCHED, 0);
        check(|s| s.born_tcp(true), |p| p, fact::CREATED_HERE | fact::TCP | fact::V6 | fact::UNTOUCHED, 0);
        let (v4, v6) = (State::default().born_tcp(false), State::default().born_tcp(true));
        assert_eq!(v4.born_proto(), Some(crate::scope::Proto::Tcp));
        assert_eq!(v6.born_proto(), Some(crate::scope::Proto::Tcp));
        assert_eq!(v4.untouched_tcp(), Some(libc::AF_INET));
        assert_eq!(v6.untouched_tcp(), Some(libc::AF_INET6));
        assert!(v4.never_bound_by_program());
        // Not known unbound: never recorded, a UDP birth, or anything since.
        assert_eq!(State::default().untouched_tcp(), None);
        assert_eq!(State::default().born_udp(true).untouched_tcp(), None);
        for later in [
            State::touched,
            State::program_bound,
            State::defer_bind,
            State::defer_slice_bind,
            State::settle,
            State::attempt_failed,
            State::bound_by_kernel,
            State::found_bound,
            |s: State| s.placed_at(Port::Owned),
            |s: State| s.placed_at(Port::Owned).disconnect_owned(),
        ] {
            let s = later(v6);
            assert_eq!(s.untouched_tcp(), None, "{s:?}");
            assert_eq!(s.born_proto(), Some(crate::scope::Proto::Tcp), "the protocol stays known: {s:?}");
        }
        // Options alone do not bind.
        assert_eq!(v4.program_set(Managed::NoPort, true).untouched_tcp(), Some(libc::AF_INET));
    }

    #[test]
    fn born_udp_is_known_unbound_until_touched() {
        let (v4, v6) = (State::default().born_udp(false), State::default().born_udp(true));
        assert_eq!(v4.untouched_udp(), Some(libc::AF_INET));
        assert_eq!(v6.untouched_udp(), Some(libc::AF_INET6));
        assert_eq!(State::default().untouched_udp(), None, "never recorded: looked at");
        assert_eq!(State::default().born_tcp(false).untouched_udp(), None, "a TCP birth");
        for later in [
            State::touched,
            State::program_bound,
            State::defer_bind,
            State::settle,
            State::attempt_failed,
            State::bound_by_kernel,
            State::found_bound,
            State::bound_in_slice,
            |s: State| s.placed_at(Port::Shared),
            |s: State| s.placed_at(Port::Shared).disconnect_shared(),
        ] {
            let s = later(v6);
            assert_eq!(s.untouched_udp(), None, "{s:?}");
            assert_eq!(s.born_proto(), Some(crate::scope::Proto::Udp), "the protocol stays known: {s:?}");
        }
        assert_eq!(v4.program_set(Managed::ReuseAddr, true).untouched_udp(), Some(libc::AF_INET));
    }

    #[test]
    fn a_tcp_birth_alone_is_not_worth_a_copy() {
        assert!(!State::default().born_tcp(true).worth_a_copy());
        assert!(!State::default().born_tcp(false).touched().worth_a_copy());
        assert!(State::default().born_udp(false).worth_a_copy(), "a UDP birth says whose port it holds");
        assert!(State::default().born_tcp(false).program_bound().worth_a_copy());
        assert!(State::default().born_tcp(false).defer_bind().worth_a_copy());
        assert!(State::default().born_tcp(false).program_set(Managed::ReuseAddr, true).worth_a_copy());
        assert!(State::default().placed_at(Port::Owned).worth_a_copy());
    }

    #[test]
    fn touched_only_drops_untouched() {
        check(State::touched, |p| p, 0, fact::UNTOUCHED);
    }

    #[test]
    fn found_bound_drops_untouched_and_the_shims_options() {
        check(State::found_bound, |p| p, 0, fact::UNTOUCHED | fact::SHIM_OPTS);
        let s =
            State::default().born_tcp(false).shim_set(fact::SHIM_OPTS).program_set(Managed::ReuseAddr, true);
        let f = s.found_bound();
        assert_eq!(f.program_value(Managed::ReuseAddr), None, "the kernel's value is the program's again");
        assert!(f.has(fact::PROG_REUSEADDR));
        assert_eq!(f.born_proto(), Some(crate::scope::Proto::Tcp));
    }

    #[test]
    fn go_unchecked_changes_whatever_entry_the_fd_has() {
        go(6002, 77, |s| s.born_tcp(false));
        go_unchecked(6002, State::touched);
        assert_eq!(of(6002, 77), State::default().born_tcp(false).touched());
        go_unchecked(6003, State::touched); // no entry: nothing happens
        assert_eq!(of(6003, 0), State::default());
    }

    #[test]
    fn defer_bind_from_fresh_or_settled() {
        check(State::defer_bind, |p| if matches!(p, Fresh | Settled) { DeferredBind } else { p }, 0, 0);
        assert!(State::default().defer_bind().bound_for_program());
    }

    #[test]
    fn defer_slice_bind_sets_no_port_for_the_program() {
        check(
            State::defer_slice_bind,
            |p| if matches!(p, Fresh | Settled) { DeferredBind } else { p },
            fact::SHIM_NO_PORT,
            fact::PROG_NO_PORT,
        );
        assert_eq!(State::default().defer_slice_bind().program_value(Managed::NoPort), Some(false));
    }

    #[test]
    fn bound_in_slice_is_placed_owned() {
        check(State::bound_in_slice, |_| Placed(Port::Owned), 0, 0);
    }

    #[test]
    fn deferred_bind_failed_back_to_fresh() {
        check(State::deferred_bind_failed, |p| if p == DeferredBind { Fresh } else { p }, 0, 0);
    }

    #[test]
    fn bound_by_kernel_is_not_the_programs() {
        check(State::bound_by_kernel, |p| if p == DeferredBind { Fresh } else { p }, fact::NOT_PROGRAMS, 0);
    }

    #[test]
    fn settle_only_from_fresh() {
        check(State::settle, |p| if p == Fresh { Settled } else { p }, 0, 0);
        assert!(State::default().settle().sends_settled());
        assert!(!State::default().defer_bind().settle().sends_settled());
    }

    #[test]
    fn placed_at_from_anywhere() {
        check(|s| s.placed_at(Port::Owned), |_| Placed(Port::Owned), fact::NOT_PROGRAMS, 0);
        check(|s| s.placed_at(Port::Shared), |_| Placed(Port::Shared), fact::NOT_PROGRAMS, 0);
        let s = State::default().placed_at(Port::Shared);
        assert!(s.placed() && s.shared_port() && s.sends_settled() && s.bound_for_program());
        // Re-placed with an owned port after a shared one: no longer shared.
        assert!(!s.disconnect_shared().placed_at(Port::Owned).shared_port());
    }

    #[test]
    fn attempt_failed_drops_a_deferred_bind() {
        check(State::attempt_failed, |p| if p == DeferredBind { Fresh } else { p }, fact::NOT_PROGRAMS, 0);
    }

    #[test]
    fn disconnect_shared_only_from_a_shared_port() {
        check(
            State::disconnect_shared,
            |p| if matches!(p, Placed(Port::Shared) | Disconnected) { Disconnected } else { p },
            0,
            0,
        );
        let d = State::default().placed_at(Port::Shared).disconnect_shared();
        assert!(d.placed() && d.disconnected() && !d.sends_settled());
    }

    #[test]
    fn disconnect_owned_back_to_fresh() {
        check(State::disconnect_owned, |p| if p == Placed(Port::Owned) { Fresh } else { p }, 0, 0);
    }

    #[test]
    fn option_transitions() {
        check(|s| s.shim_set(fact::SHIM_OPTS | fact::PROG_BOUND), |p| p, fact::SHIM_OPTS, 0);
        check(State::options_restored, |p| p, 0, fact::SHIM_NO_PORT | fact::SHIM_RANGE);
        check(|s| s.program_set(Managed::NoPort, true), |p| p, fact::PROG_NO_PORT, 0);
        check(|s| s.program_set(Managed::NoPort, false), |p| p, 0, fact::PROG_NO_PORT);
        check(|s| s.program_set(Managed::ReuseAddr, true), |p| p, fact::PROG_REUSEADDR, 0);
        check(|s| s.program_set(Managed::ReuseAddr, false), |p| p, 0, fact::PROG_REUSEADDR);
        let s = State::default().program_set(Managed::ReuseAddr, true);
        assert_eq!(s.program_value(Managed::ReuseAddr), None, "not changed by the shim");
        assert_eq!(s.shim_set(fact::SHIM_REUSEADDR).program_value(Managed::ReuseAddr), Some(true));
    }

    #[test]
    fn before_exec_materializes_deferred_and_restores_placed_options() {
        use BeforeExec::*;
        for s in all() {
            let want = match s.phase() {
                DeferredBind => Materialize,
                Placed(_) | Disconnected if s.has(fact::SHIM_NO_PORT | fact::SHIM_RANGE) => RestoreOptions,
                _ => Nothing,
            };
            assert_eq!(s.before_exec(), want, "{s:?}");
        }
        let placed = State::default().shim_set(fact::SHIM_OPTS).placed_at(Port::Owned);
        assert_eq!(placed.before_exec(), RestoreOptions);
        assert_eq!(placed.options_restored().before_exec(), Nothing, "SO_REUSEADDR alone stays");
        // In the middle of a placement (options set, not placed yet): left alone.
        assert_eq!(State::default().shim_set(fact::SHIM_OPTS).before_exec(), Nothing);
        assert_eq!(State::default().defer_slice_bind().before_exec(), Materialize);
    }

    #[test]
    fn transitions_into_exec_work_are_counted() {
        let fresh = State::default();
        let deferred = fresh.defer_bind();
        let placed = fresh.shim_set(fact::SHIM_OPTS).placed_at(Port::Owned);
        assert!(enters_exec_work(fresh, deferred));
        assert!(enters_exec_work(deferred, placed), "Materialize → RestoreOptions: new work");
        assert!(!enters_exec_work(deferred, deferred.settle()));
        assert!(!enters_exec_work(placed, placed.program_bound()));
        assert!(!enters_exec_work(placed, placed.options_restored()));
        assert!(!enters_exec_work(deferred, deferred.bound_by_kernel()));
        // go() counts (other tests only add to the count; only the pass before an exec lowers it).
        let n = exec_pending();
        go(6002, 7, State::defer_bind);
        assert!(exec_pending() > n);
    }

    #[test]
    fn go_stores_per_socket_and_notes_shim_changes() {
        go(6001, 99, State::defer_bind);
        assert!(of(6001, 99).deferred());
        assert_eq!(of(6001, 98), State::default(), "another socket's entry reads as unknown");
        go(6001, 99, |s| s.shim_set(fact::SHIM_RANGE));
        assert!(shim_changed_any());
        go(6001, 99, |s| s.placed_at(Port::Owned));
        assert_eq!(of(6001, 99).phase(), Placed(Port::Owned));
        assert!(of(6001, 99).has(fact::SHIM_RANGE));
    }
}
