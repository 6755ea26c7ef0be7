//! The TCP sysctls that decide when the kernel ends a socket on its own, as they are in the
//! socket's own network namespace (a container may set them differently from the host).

use std::{
    collections::HashMap,
    path::Path,
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The timeouts of one network namespace (`net.ipv4.*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetSysctls {
    /// `tcp_fin_timeout`: how long an orphaned FIN_WAIT2 socket lives.
    pub fin_timeout: Duration,
    /// `tcp_retries2`: retransmits of data before the kernel gives up.
    pub retries2: u32,
    /// `tcp_orphan_retries`: the same for a socket its application closed (0 means 8).
    pub orphan_retries: u32,
    /// `tcp_syn_retries`: SYNs retransmitted before a connect gives up.
    pub syn_retries: u32,
    /// `tcp_synack_retries`: SYN-ACKs retransmitted before a pending handshake is dropped.
    pub synack_retries: u32,
    /// `tcp_syn_linear_timeouts` (6.5 on; 0 before): SYN retransmits added to
    /// `tcp_syn_retries`, the first ones 1 s apart instead of doubling.
    pub syn_linear_timeouts: u32,
    /// The kernel's timer frequency (`CONFIG_HZ`; host-wide, not a sysctl): how late its
    /// timer wheel fires a long timer depends on it.
    pub hz: u32,
}

/// `CONFIG_HZ`, from the kernel's build configuration where distributions install it
/// (`/boot/config-RELEASE`); 250, Debian's, when it is not there.
pub fn kernel_hz() -> u32 {
    static HZ: OnceLock<u32> = OnceLock::new();
    *HZ.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        std::fs::read_to_string(format!("/boot/config-{}", release.trim()))
            .ok()
            .and_then(|c| {
                c.lines()
                    .find_map(|l| l.strip_prefix("CONFIG_HZ=")?.trim().parse().ok())
            })
            .unwrap_or(250)
    })
}

impl Default for NetSysctls {
    /// The kernel's defaults.
    fn default() -> Self {
        Self {
            fin_timeout: Duration::from_secs(60),
            retries2: 15,
            orphan_retries: 0,
            syn_retries: 6,
            synack_retries: 5,
            syn_linear_timeouts: 0,
            hz: kernel_hz(),
        }
    }
}

impl NetSysctls {
    /// Read from `/proc/sys/net/ipv4` as this thread sees it (its network namespace's).
    fn read() -> Self {
        let d = Self::default();
        let get = |name: &str| -> Option<u64> {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let n = |name, default: u32| get(name).map_or(default, |v| v as u32);
        Self {
            fin_timeout: get("tcp_fin_timeout").map_or(d.fin_timeout, Duration::from_secs),
            retries2: n("tcp_retries2", d.retries2),
            orphan_retries: n("tcp_orphan_retries", d.orphan_retries),
            syn_retries: n("tcp_syn_retries", d.syn_retries),
            synack_retries: n("tcp_synack_retries", d.synack_retries),
            syn_linear_timeouts: n("tcp_syn_linear_timeouts", d.syn_linear_timeouts),
            hz: d.hz,
        }
    }

    /// Read inside the network namespace `file` names.
    fn read_in(file: &Path) -> Option<Self> {
        let ns = std::fs::File::open(file).ok()?;
        std::thread::scope(|s| {
            s.spawn(|| {
                use std::os::fd::AsRawFd;
                // SAFETY: setns on a valid namespace fd affects only this short-lived thread.
                (unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0).then(Self::read)
            })
            .join()
            .ok()
            .flatten()
        })
    }

    /// The retransmits the kernel makes before it gives up on an orphan (`tcp_orphan_retries`,
    /// where 0 means 8).
    pub fn orphan_retries(&self) -> u32 {
        match self.orphan_retries {
            0 => 8,
            n => n,
        }
    }
}

/// How long read values are kept before they are read again.
const FRESH_FOR: Duration = Duration::from_secs(30);

/// Each namespace's sysctls, read at most every 30 s.
#[derive(Default)]
pub struct Cache {
    read: HashMap<u32, (Instant, NetSysctls)>,
}

impl Cache {
    /// The sysctls of namespace `netns` (0 or unknown: this process's).
    pub fn get(&mut self, netns: u32) -> NetSysctls {
        if let Some((at, v)) = self.read.get(&netns) {
            if at.elapsed() < FRESH_FOR {
                return *v;
            }
        }
        // This process's own when the namespace is ours, unknown, or gone.
        let own = super::sockdiag::own_netns();
        let v = (netns != 0 && netns != own)
            .then(|| super::sockdiag::netns_file(netns))
            .flatten()
            .and_then(|f| NetSysctls::read_in(&f))
            .unwrap_or_else(NetSysctls::read);
        self.read.insert(netns, (Instant::now(), v));
        v
    }
}
