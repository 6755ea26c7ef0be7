//! netlink sock_diag: the TCP sockets of one network namespace or of all of them (queues,
//! timers, tcp_info, inode), as `ss` lists them.
//!
//! Called only for sockets being reported (and once at start), never per event.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use anyhow::{Context, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, SocketId, StateFlags, Timer},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use crate::event::{TcpState, Tuple};

/// One TCP socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiagSocket {
    /// Endpoints, local first.
    pub tuple: Tuple,
    /// State (for a timewait socket, its substate: FIN_WAIT2 or TIME_WAIT).
    pub state: TcpState,
    /// Socket inode; 0 when no file refers to it (closed by the application: an orphan).
    pub inode: u32,
    /// Owning uid.
    pub uid: u32,
    /// Bytes received and not yet read by the application.
    pub recv_q: u32,
    /// Bytes not yet acknowledged by the peer.
    pub send_q: u32,
    /// A keepalive timer is armed.
    pub keepalive: bool,
    /// ms since the last packet was received (tcp_info), when known.
    pub last_recv_ms: Option<u32>,
    /// Current retransmission timeout in µs (tcp_info).
    pub rto_us: Option<u32>,
    /// Exponential backoff count (tcp_info).
    pub backoff: Option<u8>,
    /// ms since anything was sent or received (tcp_info), when known.
    pub idle_ms: Option<u32>,
    /// Inode of the network namespace it was listed in (0: unknown, e.g. older recordings).
    #[serde(default)]
    pub netns: u32,
    /// Its cgroup v2 id (`INET_DIAG_CGROUP_ID`; 0: unknown).
    #[serde(default)]
    pub cgroup: u64,
    /// The timer armed on it when listed, as `ss -o` shows it (`None`: none, or an older
    /// recording).
    #[serde(default)]
    pub timer: Option<Armed>,
}

/// A socket's armed timer: which, when it fires and how often it has (sock_diag's
/// `idiag_timer`, `idiag_expires`, `idiag_retrans`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Armed {
    pub kind: TimerKind,
    /// ms from the listing until it fires.
    pub in_ms: u32,
    /// Retransmits so far (for a keepalive timer: probes sent unanswered).
    pub count: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TimerKind {
    /// Retransmission (data, SYN or FIN) or loss probe.
    Retransmit,
    KeepAlive,
    /// A timewait socket's end: the kernel reaps it then (FIN_WAIT2 or TIME_WAIT).
    TimeWait,
    /// Zero-window probe.
    Probe,
}

impl Armed {
    /// How long from the listing until it fires.
    pub fn fires_in(&self) -> Duration {
        Duration::from_millis(self.in_ms.into())
    }

    /// From `inet_diag_msg`'s raw bytes (after the netlink header); the parser we use drops a
    /// timewait timer's expiry and a keepalive timer's probe count.
    fn parse(msg: &[u8]) -> Option<Self> {
        let kind = match *msg.get(2)? {
            1 => TimerKind::Retransmit,
            2 => TimerKind::KeepAlive,
            3 => TimerKind::TimeWait,
            4 => TimerKind::Probe,
            _ => return None,
        };
        let in_ms = u32::from_ne_bytes(msg.get(52..56)?.try_into().ok()?);
        Some(Self {
            kind,
            in_ms,
            count: msg[3],
        })
    }
}

impl DiagSocket {
    /// A socket with these endpoints, state and inode; empty queues, nothing else known.
    pub fn new(tuple: Tuple, state: TcpState, inode: u32) -> Self {
        Self {
            tuple,
            state,
            inode,
            uid: 0,
            recv_q: 0,
            send_q: 0,
            keepalive: false,
            last_recv_ms: None,
            rto_us: None,
            backoff: None,
            idle_ms: None,
            netns: 0,
            cgroup: 0,
            timer: None,
        }
    }

    /// No process has it open any more (the kernel owns it until it is reaped).
    pub fn is_orphan(&self) -> bool {
        self.inode == 0
    }

    /// A timewait socket's end: the kernel reaps it this long after the listing.
    pub fn reaped_in(&self) -> Option<Duration> {
        let t = self.timer.filter(|t| t.kind == TimerKind::TimeWait)?;
        Some(t.fires_in())
    }
}

/// States to ask for.
pub fn state_flags(states: &[TcpState]) -> StateFlags {
    states.iter().fold(StateFlags::empty(), |f, s| {
        f | StateFlags::from_bits_truncate(1u32.checked_shl(s.0 as u32).unwrap_or(0))
    })
}

/// `INET_DIAG_CGROUP_ID` (Linux 5.7+): the socket's cgroup v2 id, a `u64`.
const INET_DIAG_CGROUP_ID: u16 = 21;

/// inet_diag's original TCP request (both families), and sock_diag's, whose replies the parser
/// knows.
const TCPDIAG_GETSOCK: u16 = 18;
const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// The inode of the network namespace a namespace file (`/proc/PID/ns/net`, `/run/netns/NAME`)
/// names: the number `/proc/PID/ns/net` shows as `net:[N]`.
pub fn netns_inode(file: impl AsRef<std::path::Path>) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    u32::try_from(std::fs::metadata(file).ok()?.ino()).ok()
}

/// The inode of this process's network namespace.
pub fn own_netns() -> u32 {
    netns_inode("/proc/self/ns/net").unwrap_or(0)
}

/// A file that names network namespace `inode`: a bind mount under `/run/netns` (`ip netns`),
/// or some process's `/proc/PID/ns/net`.
pub fn netns_file(inode: u32) -> Option<std::path::PathBuf> {
    namespace_files().find(|p| netns_inode(p) == Some(inode))
}

/// Files naming network namespaces: `/run/netns` entries, then each process's.
fn namespace_files() -> impl Iterator<Item = std::path::PathBuf> {
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    let procs = procfs::process::all_processes()
        .into_iter()
        .flatten()
        .flatten()
        .map(|p| std::path::PathBuf::from(format!("/proc/{}/ns/net", p.pid())));
    named.chain(procs)
}

/// A sock_diag socket in this process's network namespace, or, with `ns` (a namespace file),
/// in that one: a socket stays in the namespace it was created in, so a short-lived thread
/// joins the namespace (`setns`, which needs CAP_SYS_ADMIN) just to create it.
fn open_diag(ns: Option<&std::path::Path>) -> Result<Socket> {
    let open = || -> Result<Socket> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag socket")?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(socket)
    };
    let Some(path) = ns else {
        return open();
    };
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on a valid namespace fd affects only this short-lived thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(anyhow::Error::new(std::io::Error::last_os_error())
                    .context(format!("joining network namespace {}", path.display())));
            }
            open()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("sock_diag thread panicked"))?
    })
}

/// A sock_diag socket in network namespace `netns` (`None`: this process's).
fn diag_socket(netns: Option<u32>) -> Result<Socket> {
    let Some(ns) = netns.filter(|n| *n != own_netns()) else {
        return open_diag(None);
    };
    let path = netns_file(ns)
        .with_context(|| format!("network namespace {ns}: no process or /run/netns entry in it"))?;
    open_diag(Some(&path))
}

/// The kernel refused a sock_diag request (positive errno).
#[derive(Debug)]
struct DiagError(i32);

impl std::fmt::Display for DiagError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            libc::ENOENT | libc::EOPNOTSUPP => f.write_str(
                "sock_diag has no TCP support loaded: load the tcp_diag module \
                 (`modprobe tcp_diag`) and try again",
            ),
            e => write!(f, "sock_diag: {}", std::io::Error::from_raw_os_error(e)),
        }
    }
}

impl std::error::Error for DiagError {}

/// sock_diag has no TCP part: no `tcp_diag` (ENOENT), or not even `inet_diag` (EOPNOTSUPP, for
/// the `TCPDIAG_GETSOCK` request).
fn lacks_tcp_diag(e: &anyhow::Error) -> bool {
    e.downcast_ref::<DiagError>()
        .is_some_and(|d| matches!(d.0, libc::ENOENT | libc::EOPNOTSUPP))
}

/// Distributions build sock_diag's TCP part as modules (`inet_diag`, `tcp_diag`); a host
/// usually loads them on the first request, a minimal one may not. Asked once per process.
fn load_tcp_diag() -> bool {
    static TRIED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRIED.get_or_init(|| {
        let ok = std::process::Command::new("modprobe")
            .args(["-q", "tcp_diag"])
            .status()
            .is_ok_and(|s| s.success());
        log::info!(
            "sock_diag had no TCP support: modprobe tcp_diag {}",
            if ok { "loaded it" } else { "failed" }
        );
        ok
    })
}

/// Every TCP socket (IPv4 and IPv6) of network namespace `netns` (`None`: this process's) in
/// one of `states`. Without the `tcp_diag` module, loads it once and retries.
pub fn snapshot(states: StateFlags, netns: Option<u32>) -> Result<Vec<DiagSocket>> {
    let ns = netns.unwrap_or_else(own_netns);
    let attempt = |states: StateFlags| dump(&mut diag_socket(netns)?, states, ns);
    match attempt(states.clone()) {
        Err(e) if lacks_tcp_diag(&e) && load_tcp_diag() => attempt(states),
        r => r,
    }
}

/// Both families' sockets in `states`, from `socket` (in namespace `ns`).
///
/// Asked with inet_diag's original request (`TCPDIAG_GETSOCK`), which lists both families in
/// one walk of the kernel's TCP hash table; `SOCK_DIAG_BY_FAMILY` walks it once per family. The
/// walk, not the sockets found, is what a dump costs, and the table is shared by every
/// namespace: so this halves the price of listing a namespace, which a sweep pays per namespace.
fn dump(socket: &mut Socket, states: StateFlags, ns: u32) -> Result<Vec<DiagSocket>> {
    // struct inet_diag_req: family (ignored: the kernel lists both), src_len, dst_len,
    // extensions; inet_diag_sockid (48 bytes, zero: every socket); states; dbs.
    let mut body = [0u8; 60];
    body[3] = ExtensionFlags::INFO.bits();
    body[52..56].copy_from_slice(&states.bits().to_ne_bytes());
    use netlink_packet_core::Emitable;
    let mut hdr = NetlinkHeader::default();
    hdr.message_type = TCPDIAG_GETSOCK;
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    hdr.length = (hdr.buffer_len() + body.len()) as u32;
    let mut req = vec![0u8; hdr.length as usize];
    hdr.emit(&mut req[..hdr.buffer_len()]);
    req[hdr.buffer_len()..].copy_from_slice(&body);
    socket.send(&req, 0)?;
    let mut out = Vec::new();
    receive(socket, true, &mut out)?;
    for d in &mut out {
        d.netns = ns;
    }
    Ok(out)
}

/// Every network namespace on the host, once each with a file naming it: the named ones
/// (`/run/netns`, which may have no process in them) and those of processes.
pub fn namespaces() -> Vec<(u32, std::path::PathBuf)> {
    let mut seen = HashSet::new();
    namespace_files()
        .filter_map(|p| Some((netns_inode(&p)?, p)))
        .filter(|(ns, _)| seen.insert(*ns))
        .collect()
}

/// How often every namespace is dumped by default; in between, only those with something to
/// confirm.
pub const SWEEP_EVERY: Duration = Duration::from_secs(120);

/// sock_diag across every network namespace of the host. One socket per namespace is opened
/// once and kept (entering a namespace costs a thread and a `setns`); it is dropped as soon as
/// its namespace has no process and no name left, so tcp-trace never keeps a namespace alive.
///
/// A dump walks the kernel's whole TCP hash table, which all namespaces share unless
/// `tcp_child_ehash_entries` gave them their own: its cost does not shrink with an empty
/// namespace. So every namespace is dumped at the first call and then every `sweep` (sockets
/// older than the tracer, or whose events were lost); in between,
/// only this process's namespace, the ones the caller says have candidates
/// ([`AllNamespaces::focus`]) and the ones whose last dump listed something.
#[derive(Default)]
pub struct AllNamespaces {
    sweep: Duration,
    open: HashMap<u32, Socket>,
    refused: bool,
    failed: HashSet<u32>,
    last_sweep: Option<std::time::Instant>,
    last_targeted_sweep: Option<std::time::Instant>,
    listed: HashSet<u32>,
    focus: HashSet<u32>,
}

impl AllNamespaces {
    /// Every namespace dumped every `sweep`.
    pub fn new(sweep: Duration) -> Self {
        Self {
            sweep,
            ..Self::default()
        }
    }

    /// Every TCP socket in `states` in every namespace. A namespace that cannot be entered
    /// (no CAP_SYS_ADMIN: one warning) or that vanishes meanwhile is skipped; this process's
    /// own namespace is always listed, and its failures are errors.
    pub fn snapshot(&mut self, states: StateFlags) -> Result<Vec<DiagSocket>> {
        let own = own_netns();
        let mut out = snapshot(states.clone(), None)?;
        let list = namespaces();
        self.open.retain(|ns, _| list.iter().any(|(n, _)| n == ns));
        let sweep = self.last_sweep.is_none_or(|at| at.elapsed() >= self.sweep);
        if sweep {
            self.last_sweep = Some(std::time::Instant::now());
        }
        let wanted = |ns: &u32| sweep || self.listed.contains(ns) || self.focus.contains(ns);
        let chosen: Vec<_> = list
            .iter()
            .filter(|(ns, _)| *ns != own && wanted(ns))
            .collect();
        for (ns, path) in chosen {
            let socket = match self.open.entry(*ns) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => match open_diag(Some(path)) {
                    Ok(s) => v.insert(s),
                    Err(e) => {
                        self.cannot_enter(&e);
                        continue;
                    }
                },
            };
            match dump(socket, states.clone(), *ns) {
                Ok(mut v) => {
                    match v.is_empty() {
                        true => self.listed.remove(ns),
                        false => self.listed.insert(*ns),
                    };
                    out.append(&mut v);
                }
                // The socket keeps its namespace alive, so this is sock_diag failing there:
                // said once per namespace; the socket is opened anew next time.
                Err(e) => {
                    if self.failed.insert(*ns) {
                        log::warn!("network namespace {ns}: {e:#}: its sockets are not listed");
                    }
                    self.open.remove(ns);
                }
            }
        }
        Ok(out)
    }

    /// The sockets in `states` of this process's namespace and of the namespaces in `wanted`,
    /// and of every namespace once per sweep period: a look at a few namespaces between
    /// sweeps (e.g. at listeners whose handshakes are retried), with its own sweeps.
    pub fn in_namespaces(
        &mut self,
        states: StateFlags,
        wanted: &HashSet<u32>,
    ) -> Result<Vec<DiagSocket>> {
        let own = own_netns();
        let mut out = snapshot(states.clone(), None)?;
        let sweep = self
            .last_targeted_sweep
            .is_none_or(|at| at.elapsed() >= self.sweep);
        if sweep {
            self.last_targeted_sweep = Some(std::time::Instant::now());
        }
        for (ns, path) in namespaces() {
            if ns == own || !(sweep || wanted.contains(&ns)) {
                continue;
            }
            let socket = match self.open.entry(ns) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => match open_diag(Some(&path)) {
                    Ok(s) => v.insert(s),
                    Err(e) => {
                        self.cannot_enter(&e);
                        continue;
                    }
                },
            };
            match dump(socket, states.clone(), ns) {
                Ok(mut v) => out.append(&mut v),
                Err(_) => {
                    self.open.remove(&ns);
                }
            }
        }
        Ok(out)
    }

    /// Namespaces that have something to confirm (e.g. sockets the events saw enter a
    /// reported state): dumped at every call, not only at sweeps.
    pub fn focus(&mut self, namespaces: HashSet<u32>) {
        self.focus = namespaces;
    }

    /// Namespaces this process could not enter (a vanished one is only a debug line).
    fn cannot_enter(&mut self, e: &anyhow::Error) {
        let denied = e
            .chain()
            .filter_map(|c| c.downcast_ref::<std::io::Error>())
            .any(|io| io.raw_os_error() == Some(libc::EPERM));
        // Without CAP_SYS_ADMIN the start-up check has said so already.
        let said = !crate::kernel::privilege::has_sys_admin();
        if denied && !self.refused && !said {
            self.refused = true;
            log::warn!(
                "cannot enter other network namespaces (setns needs CAP_SYS_ADMIN): only this \
                 namespace's sockets are listed; sockets in containers' namespaces are not"
            );
        } else if !denied || said {
            log::debug!("{e:#}");
        }
    }

    /// The socket with these endpoints in namespace `netns` (0: this process's), through the
    /// socket already open there when there is one.
    pub fn lookup(&mut self, t: &Tuple, netns: u32) -> Option<DiagSocket> {
        match self.open.get_mut(&netns) {
            Some(socket) => lookup_with(socket, t, netns),
            None => lookup(t, (netns != 0).then_some(netns)),
        }
    }
}

/// The one socket with these endpoints in network namespace `netns` (`None`: this
/// process's), if any.
pub fn lookup(t: &Tuple, netns: Option<u32>) -> Option<DiagSocket> {
    let mut socket = diag_socket(netns).ok()?;
    lookup_with(&mut socket, t, netns.unwrap_or_else(own_netns))
}

fn lookup_with(socket: &mut Socket, t: &Tuple, ns: u32) -> Option<DiagSocket> {
    let id = SocketId {
        source_port: t.sport,
        destination_port: t.dport,
        source_address: t.saddr,
        destination_address: t.daddr,
        interface_id: 0,
        cookie: [0xff; 8], // INET_DIAG_NOCOOKIE: match by endpoints
    };
    let family = if t.saddr.is_ipv4() { AF_INET } else { AF_INET6 };
    let mut out = Vec::new();
    query(socket, family, id, &mut out).ok()?;
    out.into_iter()
        .next()
        .map(|d| DiagSocket { netns: ns, ..d })
}

/// The one socket `socket_id` names (by endpoints, in any state).
fn query(
    socket: &mut Socket,
    family: u8,
    socket_id: SocketId,
    out: &mut Vec<DiagSocket>,
) -> Result<()> {
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST;
    let mut req = NetlinkMessage::new(
        hdr,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states: StateFlags::all(),
            socket_id,
        })
        .into(),
    );
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0)?;

    receive(socket, false, out)
}

/// The replies to one request, until the dump's end (or the first socket, when not a dump).
/// A `TCPDIAG_GETSOCK` reply has the same layout as a `SOCK_DIAG_BY_FAMILY` one.
fn receive(socket: &mut Socket, dump: bool, out: &mut Vec<DiagSocket>) -> Result<()> {
    let mut rx = vec![0u8; 64 << 10];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut off = 0;
        while off + 6 <= n {
            if rx[off + 4..off + 6] == TCPDIAG_GETSOCK.to_ne_bytes() {
                rx[off + 4..off + 6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
            }
            let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&rx[off..n])
                .map_err(|e| anyhow::anyhow!("malformed sock_diag reply: {e}"))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let h = &r.header;
                    let tuple = Tuple {
                        saddr: h.socket_id.source_address,
                        sport: h.socket_id.source_port,
                        daddr: h.socket_id.destination_address,
                        dport: h.socket_id.destination_port,
                    };
                    let mut d = DiagSocket {
                        timer: Armed::parse(rx.get(off + 16..off + len).unwrap_or(&[])),
                        uid: h.uid,
                        recv_q: h.recv_queue,
                        send_q: h.send_queue,
                        keepalive: matches!(h.timer, Some(Timer::KeepAlive(_))),
                        ..DiagSocket::new(tuple, TcpState(i32::from(h.state)), h.inode)
                    };
                    for nla in &r.nlas {
                        if let Nla::Other(o) = nla {
                            use netlink_packet_core::Nla as _;
                            if o.kind() == INET_DIAG_CGROUP_ID && o.value_len() == 8 {
                                let mut v = [0u8; 8];
                                o.emit_value(&mut v);
                                d.cgroup = u64::from_ne_bytes(v);
                            }
                        }
                        if let Nla::TcpInfo(ti) = nla {
                            d.last_recv_ms = Some(ti.last_ack_recv.min(ti.last_data_recv));
                            d.rto_us = Some(ti.rto);
                            d.backoff = Some(ti.backoff);
                            d.idle_ms = Some(
                                ti.last_data_recv
                                    .min(ti.last_ack_recv)
                                    .min(ti.last_data_sent),
                            );
                        }
                    }
                    out.push(d);
                    if !dump {
                        return Ok(());
                    }
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    let errno = e.code.map_or(0, |c| -c.get());
                    return Err(DiagError(errno).into());
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_flags_select_the_states() {
        let f = state_flags(&[TcpState::CLOSE_WAIT, TcpState::FIN_WAIT2]);
        assert_eq!(f, StateFlags::CLOSE_WAIT | StateFlags::FIN_WAIT2);
        assert_eq!(state_flags(&[TcpState(99)]), StateFlags::empty());
    }

    #[test]
    fn the_timer_is_read_from_the_raw_message() {
        // family, state, timer, retrans, 48 bytes of socket id, expires, ...
        let mut msg = vec![2u8, 1, 2, 3];
        msg.extend([0; 48]);
        msg.extend(7_500u32.to_ne_bytes());
        msg.extend([0; 16]);
        let keepalive = Armed {
            kind: TimerKind::KeepAlive,
            in_ms: 7_500,
            count: 3,
        };
        assert_eq!(Armed::parse(&msg), Some(keepalive));
        msg[2] = 0;
        assert_eq!(Armed::parse(&msg), None, "no timer armed");
        msg[2] = 3;
        assert_eq!(Armed::parse(&msg[..40]), None, "cut short");
    }
}
