//! The peer recorder: a listener that remembers where every flow came from.

use crate::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What a [`Recorder`] does with an accepted connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Read a request, answer `HTTP/1.1 200 OK` + `Connection: close` + `ok\n`, close.
    Http,
    /// Keep the connection open until the recorder is dropped.
    Hold,
    /// Echo everything back until EOF.
    Echo,
    /// Record every byte received until EOF (see [`Recorder::received`]).
    Bytes,
}

/// One accepted connection.
#[derive(Clone, Debug)]
pub struct Conn {
    pub peer: SocketAddr,
    pub accepted: Instant,
    /// When the peer closed or reset it (Http, Echo and Bytes modes; never set in Hold mode).
    pub ended: Option<Instant>,
    /// Bytes received (Bytes mode).
    pub bytes: Vec<u8>,
}

#[derive(Default)]
struct State {
    peers: Vec<SocketAddr>,
    /// Every accepted connection, in accept order.
    conns: Vec<Conn>,
    /// Connections whose handler finished (peer closed).
    finished: usize,
    held: Vec<TcpStream>,
}

struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

/// A TCP listener that records the source address of every connection it accepts.
pub struct Recorder {
    addr: SocketAddr,
    mode: Mode,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

pub const HTTP_BODY: &str = "ok\n";

impl Recorder {
    /// Listen on `ip` (e.g. `"127.0.0.1"`, `"::1"`) at a fresh port.
    pub fn start(ip: &str, mode: Mode) -> Recorder {
        let ip: IpAddr = ip.parse().unwrap_or_else(|_| panic!("bad recorder IP {ip}"));
        let listener = bind_listener(ip);
        let addr = listener.local_addr().expect("local_addr");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let shared = Arc::new(Shared { state: Mutex::new(State::default()), cv: Condvar::new() });
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, st) = (shared.clone(), stop.clone());
        let thread = thread::Builder::new()
            .name(format!("recorder-{addr}"))
            .spawn(move || accept_loop(listener, mode, sh, st))
            .expect("spawn recorder");
        Recorder { addr, mode, shared, stop, thread: Some(thread) }
    }
    pub fn http(ip: &str) -> Recorder {
        Recorder::start(ip, Mode::Http)
    }
    pub fn hold(ip: &str) -> Recorder {
        Recorder::start(ip, Mode::Hold)
    }
    pub fn echo(ip: &str) -> Recorder {
        Recorder::start(ip, Mode::Echo)
    }
    pub fn bytes(ip: &str) -> Recorder {
        Recorder::start(ip, Mode::Bytes)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// The listening IP as text (no brackets), for command lines.
    pub fn ip(&self) -> String {
        self.addr.ip().to_string()
    }
    /// `http://IP:PORT/` (IPv6 in brackets).
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Every peer accepted so far, in accept order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.shared.state.lock().unwrap().peers.clone()
    }

    /// Wait until at least `n` peers were accepted or `timeout` passed; returns the peers.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<SocketAddr> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap();
        while st.peers.len() < n {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self.shared.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
        st.peers.clone()
    }

    /// Give late connections a moment to be accepted, then return the peers (for asserting
    /// that nothing, or nothing more, arrived).
    pub fn settle(&self) -> Vec<SocketAddr> {
        thread::sleep(Duration::from_millis(200));
        self.peers()
    }

    /// Wait until `n` connections were closed by their peers (Http/Echo/Bytes modes).
    pub fn wait_finished(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap();
        while st.finished < n {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self.shared.cv.wait_timeout(st, deadline - now).unwrap().0;
        }
        true
    }

    /// All bytes received (Mode::Bytes), connections concatenated in accept order.
    pub fn received(&self) -> Vec<u8> {
        let st = self.shared.state.lock().unwrap();
        st.conns.iter().flat_map(|c| c.bytes.iter().copied()).collect()
    }

    /// Every accepted connection so far, in accept order.
    pub fn connections(&self) -> Vec<Conn> {
        self.shared.state.lock().unwrap().conns.clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(mut st) = self.shared.state.lock() {
            for s in st.held.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

fn accept_loop(listener: TcpListener, mode: Mode, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let _ = stream.set_nonblocking(false);
                {
                    let mut st = shared.state.lock().unwrap();
                    st.peers.push(peer);
                    st.conns.push(Conn { peer, accepted: Instant::now(), ended: None, bytes: Vec::new() });
                }
                shared.cv.notify_all();
                if mode == Mode::Hold {
                    shared.state.lock().unwrap().held.push(stream);
                    continue;
                }
                let sh = shared.clone();
                let _ = thread::Builder::new()
                    .name(format!("recorder-conn-{peer}"))
                    .spawn(move || serve(stream, peer, mode, sh));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 20) };
            }
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve(mut s: TcpStream, peer: SocketAddr, mode: Mode, shared: Arc<Shared>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; 4096];
    match mode {
        Mode::Http => {
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                HTTP_BODY.len(),
                HTTP_BODY
            );
            let _ = s.write_all(resp.as_bytes());
            let _ = s.flush();
        }
        Mode::Echo => loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        },
        Mode::Bytes => loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut st = shared.state.lock().unwrap();
                    if let Some(c) = st.conns.iter_mut().rev().find(|c| c.peer == peer) {
                        c.bytes.extend_from_slice(&buf[..n]);
                    }
                }
            }
        },
        Mode::Hold => unreachable!(),
    }
    drop(s);
    let mut st = shared.state.lock().unwrap();
    st.finished += 1;
    if let Some(c) = st.conns.iter_mut().rev().find(|c| c.peer == peer) {
        c.ended = Some(Instant::now());
    }
    drop(st);
    shared.cv.notify_all();
}

// ---------------------------------------------------------------------------------------------
