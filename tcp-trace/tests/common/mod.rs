//! Shared helpers for the kernel integration tests: a real tracer process, traffic helpers
//! and network namespaces that are removed even when a test fails.
#![allow(dead_code)] // each test binary uses a different subset

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, OnceLock},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The tracer under test: this build's, or the binary `TCP_TRACE_BIN` names (the VM runner
/// names the release build that ships: a debug build starts twice as slowly on an emulated
/// CPU).
pub fn bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("TCP_TRACE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tcp-trace").into())
    })
}

/// `d` times `TCP_TRACE_TEST_SLOWDOWN` (default 1): the VM runner (`cargo xtask test
/// --kernel`) sets it because its emulated CPU makes everything several times slower.
pub fn slow(d: Duration) -> Duration {
    static FACTOR: OnceLock<f64> = OnceLock::new();
    let f = *FACTOR.get_or_init(|| {
        std::env::var("TCP_TRACE_TEST_SLOWDOWN")
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|f: &f64| *f >= 1.0)
            .unwrap_or(1.0)
    });
    d.mul_f64(f)
}

/// Whether the tests run on the VM runner's emulated CPU (a slowdown is set).
pub fn emulated() -> bool {
    slow(Duration::from_secs(1)) > Duration::from_secs(1)
}

/// An abstract unix datagram socket for `$NOTIFY_SOCKET` (nothing to clean up), unique in
/// this host; reads time out so the caller can watch the child meanwhile.
fn notify_socket() -> (std::os::unix::net::UnixDatagram, String) {
    use std::os::linux::net::SocketAddrExt;
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("tcp-trace-test-{}-{n}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
    let sock = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    (sock, name)
}

/// Fails (never skips) when the tests cannot load BPF.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the kernel integration tests load BPF programs and must run as root"
    );
}

/// A free port, never the same twice in this test process (tests run in parallel and each
/// filters on its own port), and below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`): a port from that range can be given at the same time to
/// another test's connect() as its source port, and a tracer filtering on the port would then
/// see that test's connection too.
///
/// The port stays reserved until this process exits: a socket bound to its wildcard with
/// `SO_REUSEADDR`, never listening. A test binds it later (after its tracer has started, to
/// see the listen), and any other program that binds the port meanwhile without
/// `SO_REUSEADDR` now fails instead of the test (CI once met one). Every listener the tests
/// make in this namespace sets `SO_REUSEADDR`, which a bound, non-listening socket lets through
/// (the raw binds without it are in the tests' own namespaces).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<(u16, OwnedFd)>> = Mutex::new(Vec::new());
    const FROM: u32 = 20_000;
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(FROM).max(1);
    // Where this process starts looking, so that two test processes rarely try the same.
    let start = std::process::id().wrapping_mul(7_919) % span;
    let mut given = GIVEN.lock().unwrap();
    for i in 0..span {
        let port = (FROM + (start + i) % span) as u16;
        if given.iter().any(|(p, _)| *p == port) {
            continue;
        }
        // Free for any address a test binds, with no socket of any state on it (a bind without
        // `SO_REUSEADDR` meets even a TIME_WAIT), then reserved.
        if bind_wildcard(port, false).is_none() {
            continue;
        }
        if let Some(reserved) = bind_wildcard(port, true) {
            given.push((port, reserved));
            return port;
        }
    }
    panic!("no free port between {FROM} and {ephemeral}");
}

/// A TCP socket bound to `port` on the wildcard of both families (an IPv6 socket is
/// dual-stack while `net.ipv6.bindv6only` is 0, the default; else IPv4's), with
/// `SO_REUSEADDR` when `reuse`. Bound, never listening: a listen would be a state change,
/// which a tracer filtering on that port would see.
fn bind_wildcard(port: u16, reuse: bool) -> Option<OwnedFd> {
    let v6 = std::path::Path::new("/proc/net/if_inet6").exists();
    // SAFETY: a new socket, owned at once; an int option and a sockaddr of the sizes given.
    unsafe {
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        if reuse
            && libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of_val(&one) as u32,
            ) != 0
        {
            return None;
        }
        // The wildcard is all zeros in both families, and the port follows the family in both
        // (`sin_port`, `sin6_port`): one address, of the family's length.
        let len = match v6 {
            true => std::mem::size_of::<libc::sockaddr_in6>(),
            false => std::mem::size_of::<libc::sockaddr_in>(),
        };
        let mut a: libc::sockaddr_storage = std::mem::zeroed();
        a.ss_family = family as libc::sa_family_t;
        (*(&raw mut a).cast::<libc::sockaddr_in>()).sin_port = port.to_be();
        let r = libc::bind(fd.as_raw_fd(), (&raw const a).cast(), len as u32);
        (r == 0).then_some(fd)
    }
}

/// A running `tcp-trace` with its stdout lines collected.
pub struct Tracer {
    child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Tracer {
    /// Starts `tcp-trace ARGS` and waits until it says it is ready (systemd's `READY=1` on
    /// `$NOTIFY_SOCKET`: programs attached, start-up snapshot taken).
    pub fn start(args: &[&str]) -> Self {
        require_root();
        let (notify, name) = notify_socket();
        let mut child = Command::new(bin())
            .args(args)
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", format!("@{name}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcp-trace");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let l2 = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        let err = child.stderr.take().unwrap();
        let e2 = stderr.clone();
        thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                e2.lock().unwrap().push(line);
            }
        });
        let mut t = Self {
            child,
            lines,
            stderr,
        };
        let start = Instant::now();
        let mut buf = [0u8; 64];
        loop {
            if let Ok(n) = notify.recv(&mut buf) {
                assert_eq!(&buf[..n], b"READY=1", "tcp-trace said something else");
                return t;
            }
            if let Ok(Some(st)) = t.child.try_wait() {
                panic!(
                    "tcp-trace exited early ({st}): {:?}",
                    t.stderr.lock().unwrap()
                );
            }
            assert!(
                start.elapsed() < slow(Duration::from_secs(20)),
                "tcp-trace did not say it was ready: {:?}",
                t.stderr.lock().unwrap()
            );
        }
    }

    /// Live `stuck --json` on `port`, reporting after `threshold`, evaluating every 250 ms.
    pub fn stuck(threshold: &str, port: u16) -> Self {
        let port = port.to_string();
        let args = [
            "stuck",
            "--json",
            "--threshold",
            threshold,
            "--interval",
            "250ms",
        ];
        Self::start(&[&args[..], &["--port", &port]].concat())
    }

    /// Every stdout line parsed as JSON (panics on a line that is not JSON).
    pub fn json(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// Waits until `pred` holds for the parsed output, or panics with the output (after
    /// `slow(timeout)`).
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let v = self.json();
            if pred(&v) {
                return v;
            }
            if start.elapsed() > slow(timeout) {
                panic!(
                    "timed out waiting for {what}; output:\n{}\nstderr: {:?}\ntracer: {}",
                    self.lines.lock().unwrap().join("\n"),
                    self.stderr.lock().unwrap(),
                    self.threads()
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// What each of the tracer's threads is doing (its state and where it sleeps in the
    /// kernel), for a timeout's message: a tracer blocked in a system call, or busy, or idle.
    fn threads(&self) -> String {
        let pid = self.child.id();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return format!("pid {pid} is gone");
        };
        tasks
            .flatten()
            .map(|t| {
                let read = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
                let stat = read("stat");
                // The fields after the name: state, then (13th, 14th) user and system ticks.
                let after = stat.rsplit_once(") ").map_or("", |s| s.1);
                let f: Vec<&str> = after.split(' ').collect();
                let pick = |i: usize| f.get(i).copied().unwrap_or("?");
                format!(
                    "{} {} {} wchan {} utime {} stime {}",
                    t.file_name().to_string_lossy(),
                    read("comm").trim(),
                    pick(0),
                    read("wchan"),
                    pick(11),
                    pick(12)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Waits (`slow(timeout)`) for the process to exit by itself; its status, stdout and
    /// stderr lines.
    pub fn wait_exit(
        mut self,
        timeout: Duration,
    ) -> (std::process::ExitStatus, Vec<String>, Vec<String>) {
        let start = Instant::now();
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                start.elapsed() < slow(timeout),
                "tcp-trace did not exit by itself"
            );
            thread::sleep(Duration::from_millis(20));
        };
        thread::sleep(slow(Duration::from_millis(50)));
        let out = self.lines.lock().unwrap().clone();
        let err = self.stderr.lock().unwrap().clone();
        (st, out, err)
    }

    /// SIGINT, then the exit status (must come within `slow(5 s)`).
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<String>, Vec<String>) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let start = Instant::now();
        let st = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                start.elapsed() < slow(Duration::from_secs(5)),
                "tcp-trace did not exit on SIGINT"
            );
            thread::sleep(Duration::from_millis(10));
        };
        thread::sleep(slow(Duration::from_millis(50))); // let the reader threads finish
        let out = self.lines.lock().unwrap().clone();
        let err = self.stderr.lock().unwrap().clone();
        (st, out, err)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many BPF programs of each type the tracer holds: (tracepoint, BTF-typed tracing).
    pub fn program_types(&self) -> (usize, usize) {
        let mut n = (0, 0);
        for e in std::fs::read_dir(format!("/proc/{}/fdinfo", self.pid())).unwrap() {
            let info = std::fs::read_to_string(e.unwrap().path()).unwrap_or_default();
            let ty = info.lines().find_map(|l| l.strip_prefix("prog_type:"));
            match ty.map(str::trim) {
                Some("5") => n.0 += 1,  // BPF_PROG_TYPE_TRACEPOINT
                Some("26") => n.1 += 1, // BPF_PROG_TYPE_TRACING (tp_btf)
                _ => {}
            }
        }
        n
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// State events of one socket, as (old, new) names, in output order.
pub fn transitions(events: &[Value], sock: &str) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["type"] == "state" && e["sock"] == sock)
        .map(|e| {
            (
                e["old"].as_str().unwrap().to_string(),
                e["new"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The socket id of the first state event matching `pred`.
pub fn sock_of(events: &[Value], pred: impl Fn(&Value) -> bool) -> Option<String> {
    events
        .iter()
        .find(|e| e["type"] == "state" && pred(e))
        .and_then(|e| e["sock"].as_str().map(String::from))
}

pub fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// Two network namespaces joined by a veth pair: `a` = 10.X.Y.1, `b` = 10.X.Y.2 (/24), both
/// created by this test and deleted on drop, even when the test panics.
pub struct NetnsPair {
    pub a: String,
    pub b: String,
    pub a_addr: String,
    pub b_addr: String,
}

impl NetnsPair {
    pub fn new(tag: &str) -> Self {
        require_root();
        let id = std::process::id() % 60000;
        let a = format!("tt-{tag}-{id}-a");
        let b = format!("tt-{tag}-{id}-b");
        let subnet = (id % 250) as u8 + 1;
        let third = tag
            .bytes()
            .fold(0u8, |h, c| h.wrapping_mul(31).wrapping_add(c))
            % 250;
        let pair = Self {
            a: a.clone(),
            b: b.clone(),
            a_addr: format!("10.{subnet}.{third}.1"),
            b_addr: format!("10.{subnet}.{third}.2"),
        };
        ip(&["netns", "add", &a]);
        ip(&["netns", "add", &b]);
        let va = format!("v{id}{}a", &tag[..tag.len().min(3)]);
        let vb = format!("v{id}{}b", &tag[..tag.len().min(3)]);
        ip(&[
            "link", "add", &va, "netns", &a, "type", "veth", "peer", "name", &vb, "netns", &b,
        ]);
        ip(&[
            "-n",
            &a,
            "addr",
            "add",
            &format!("{}/24", pair.a_addr),
            "dev",
            &va,
        ]);
        ip(&[
            "-n",
            &b,
            "addr",
            "add",
            &format!("{}/24", pair.b_addr),
            "dev",
            &vb,
        ]);
        for (ns, dev) in [(&a, &va), (&b, &vb)] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Drops everything namespace `ns` sends to `to` (a blackhole route inside `ns` only).
    pub fn blackhole(&self, ns: &str, to: &str) {
        ip(&["-n", ns, "route", "add", "blackhole", &format!("{to}/32")]);
    }

    /// Sends what `ns` addresses to `to` via an on-link gateway nobody answers ARP for: the
    /// packets leave the socket layer successfully and are lost on the wire.
    pub fn silent_gateway(&self, ns: &str, to: &str) {
        let gw = format!("{}.3", self.a_addr.rsplit_once('.').unwrap().0);
        ip(&["-n", ns, "route", "add", &format!("{to}/32"), "via", &gw]);
    }

    /// A listener on `b`'s address and `port`, inside `b`.
    pub fn listen_in_b(&self, port: u16) -> TcpListener {
        let b_addr = self.b_addr.clone();
        in_netns(&self.b, move || {
            TcpListener::bind((b_addr.as_str(), port)).unwrap()
        })
    }

    /// A connection from inside `a` to `b`'s address and `port`, given up after `timeout`.
    pub fn connect_from_a(&self, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
        let target: SocketAddr = format!("{}:{port}", self.b_addr).parse().unwrap();
        in_netns(&self.a, move || {
            TcpStream::connect_timeout(&target, timeout)
        })
    }

    /// Lifts [`Self::blackhole`].
    pub fn unblackhole(&self, ns: &str, to: &str) {
        ip(&["-n", ns, "route", "del", "blackhole", &format!("{to}/32")]);
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Sets `setting` (`name=value`) in network namespace `ns` only.
pub fn sysctl_in(ns: &str, setting: &str) {
    let st = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-q", "-w", setting])
        .status()
        .unwrap();
    assert!(st.success(), "sysctl {setting} in {ns}");
}

/// The value of sysctl `name` (`net.ipv4.…`) in network namespace `ns`; `None` when this
/// kernel does not have it.
pub fn sysctl_of(ns: &str, name: &str) -> Option<u64> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "cat", &path])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .flatten()
}

/// Runs `f` on a thread that has entered network namespace `ns` (sockets it creates live there).
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns on this thread only, with a valid namespace fd.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// The Python test peer (`tests/peer.py`) running one scenario; killed on drop.
pub struct Peer {
    child: Child,
    /// The numbers from its `ready` line.
    pub server_pid: u32,
    pub server_fd: i64,
    pub client_pid: u32,
    pub client_fd: i64,
    pub client_port: u16,
}

impl Peer {
    /// `halfclose HOST PORT`: client shut down its side, server never closes.
    pub fn halfclose(host: &str, port: u16) -> Self {
        Self::halfclose_with(Command::new("python3"), host, port)
    }

    /// The same inside network namespace `ns` (`ip netns exec`).
    pub fn halfclose_in(ns: &str, host: &str, port: u16) -> Self {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "python3"]);
        Self::halfclose_with(cmd, host, port)
    }

    /// `closefirst`: `who` ("server" or "client") closes at once, the other never does;
    /// the server listens on `listen` ("::": dual stack), the client connects to `connect`.
    pub fn closefirst(who: &str, listen: &str, connect: &str, port: u16) -> Self {
        let port = port.to_string();
        Self::run(&["closefirst", who, listen, connect, &port])
    }

    /// `leak`: the client opens `n` connections and closes them, the server never closes one.
    pub fn leak(n: usize, host: &str, port: u16) -> Self {
        Self::run(&["leak", &n.to_string(), host, &port.to_string()])
    }

    fn run(args: &[&str]) -> Self {
        let mut python = Command::new("python3");
        python.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peer.py"));
        python.args(args);
        Self::started(python)
    }

    fn halfclose_with(mut python: Command, host: &str, port: u16) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peer.py");
        python.args([script, "halfclose", host, &port.to_string()]);
        Self::started(python)
    }

    fn started(mut python: Command) -> Self {
        let mut child = python.stdout(Stdio::piped()).spawn().expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() != Some(&"ready") {
            // How it ended (a signal, an exit code) says who stopped it; once seen in an
            // emulated arm64 guest, with nothing on its stderr.
            let _ = child.kill();
            panic!("peer said {line:?}; the peer: {:?}", child.wait());
        }
        Self {
            child,
            server_pid: f[1].parse().unwrap(),
            server_fd: f[2].parse().unwrap(),
            client_pid: f[3].parse().unwrap(),
            client_fd: f[4].parse().unwrap(),
            client_port: f[5].parse().unwrap(),
        }
    }

    /// Makes one side close its socket (SIGUSR1 to that process).
    pub fn close(pid: u32) {
        // SAFETY: signalling a child process of this test.
        unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.client_pid as i32, libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets a socket option (panics on failure).
pub fn setsockopt(s: &impl AsRawFd, level: i32, name: i32, val: &[u8]) {
    // SAFETY: a valid socket fd and a buffer of the given length.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            val.as_ptr().cast(),
            val.len() as u32,
        )
    };
    assert_eq!(
        r,
        0,
        "setsockopt {name}: {}",
        std::io::Error::last_os_error()
    );
}

/// SO_LINGER 0: close() sends a reset.
pub fn abort_on_close(s: &impl AsRawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: reading the bytes of a plain C struct.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&l as *const libc::linger).cast::<u8>(),
            size_of::<libc::linger>(),
        )
    };
    setsockopt(s, libc::SOL_SOCKET, libc::SO_LINGER, bytes);
}

/// Client in `a`, server in `b`, connected, with some data exchanged.
pub fn connected(net: &NetnsPair, port: u16) -> (TcpStream, TcpStream) {
    let listener = net.listen_in_b(port);
    let mut client = net
        .connect_from_a(port, slow(Duration::from_secs(5)))
        .unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf).unwrap();
    (client, server)
}

/// `n` loopback connections to `port` on a listener of their own: data each way, the client
/// closes first, the server reads the end of stream and closes.
pub fn clean_connections(port: u16, n: usize) {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    for _ in 0..n {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        c.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        drop(c);
        assert_eq!(
            s.read(&mut b).unwrap(),
            0,
            "end of stream after the client's close"
        );
    }
}

/// The milliseconds a `life` object's `states` add up to.
pub fn states_ms(l: &Value) -> f64 {
    l["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["ms"].as_f64().unwrap())
        .sum()
}

/// Whether this kernel traces resets sent for no socket: its `tcp_send_reset` has the layout
/// with a `reason` (older kernels fire it only for resets a socket sends; tcp-trace says so).
pub fn socketless_resets_traced() -> bool {
    let format = std::fs::read_to_string("/sys/kernel/tracing/events/tcp/tcp_send_reset/format")
        .expect("tcp_send_reset format");
    format.contains(" reason;")
}

/// Whether this kernel reports socket errors (`sock/inet_sk_error_report`, new in Linux 5.14):
/// without it `watch` shows no `error` events, and the error that ends a connection is read
/// from its socket at its close.
pub fn errors_reported() -> bool {
    std::path::Path::new("/sys/kernel/tracing/events/sock/inet_sk_error_report").exists()
}

/// Says in the test's output, which the VM runner's report lists, that a check needs a newer
/// kernel than this one, and why.
pub fn not_on_this_kernel(check: &str, why: &str) {
    println!("NOT CHECKED ON THIS KERNEL: {check}: {why}");
}

/// [`not_on_this_kernel`] for the checks of `error` events.
pub fn no_error_events(check: &str) {
    not_on_this_kernel(
        check,
        "this kernel has no sock/inet_sk_error_report (Linux 5.14 added it), so no `error` events",
    );
}

/// The inode of named network namespace `ns` (what events and reports call its `netns`).
pub fn netns_of(ns: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/run/netns/{ns}")).unwrap().ino()
}

/// A process in cgroup `dir` leaking one CLOSE_WAIT on `addr:port` (it accepts, closes its
/// listener, its client closes, and it never closes the accepted socket; the client's side is
/// an orphan); killed on drop.
pub struct Leak(std::process::Child);

impl Leak {
    pub fn start(dir: &std::path::Path, addr: &str, port: u16) -> Self {
        use std::io::BufRead;
        let script = format!(
            "import os,socket,time\n\
             open('{}/cgroup.procs','w').write(str(os.getpid()))\n\
             l=socket.socket(); l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             l.bind(('{addr}',{port})); l.listen()\n\
             c=socket.create_connection(('{addr}',{port})); s,_=l.accept(); l.close(); c.close()\n\
             print('ready',flush=True); time.sleep(600)",
            dir.display()
        );
        let mut child = Command::new("python3")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Self(child)
    }
}

impl Drop for Leak {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `path` from an HTTP server on loopback `port`, over a fresh connection (HTTP/1.0: the
/// body ends with the connection, never chunked): (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(slow(Duration::from_secs(10))))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

/// The value of the sample whose line starts with `series ` in a /metrics text, `None` when
/// there is none (for a series that appears only once something happened).
pub fn try_sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(|v| {
            let v = v.split_whitespace().next().unwrap_or_default();
            v.parse()
                .unwrap_or_else(|e| panic!("{series}: value {v:?} is not a number ({e})"))
        })
}

/// The value of the sample whose line starts with `series ` in a /metrics text; a test
/// failure naming it when there is none.
pub fn sample(body: &str, series: &str) -> f64 {
    try_sample(body, series).unwrap_or_else(|| panic!("no series {series} in /metrics:\n{body}"))
}

/// `delivered N events, lost M` from the tracer's last stderr line.
pub fn counts(err: &[String]) -> (u64, u64) {
    let line = err
        .iter()
        .rev()
        .find(|l| l.contains("delivered"))
        .expect("final counts line");
    let num = |key: &str| -> u64 {
        let i = line.find(key).unwrap() + key.len();
        line[i..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (num("delivered"), num("lost"))
}
