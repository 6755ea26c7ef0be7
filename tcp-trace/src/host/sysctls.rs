//! The TCP sysctls that decide when the kernel ends a socket on its own, as they are in the
//! socket's own network namespace (a container may set them differently from the host).

use std::{
    collections::HashMap,
    path::Path,
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
    /// `tcp_keepalive_intvl`: between keepalive probes.
    pub keepalive_intvl: Duration,
    /// `tcp_keepalive_probes`: unanswered probes before the kernel gives up.
    pub keepalive_probes: u32,
}

impl Default for NetSysctls {
    /// The kernel's defaults.
    fn default() -> Self {
        Self {
            fin_timeout: Duration::from_secs(60),
            retries2: 15,
            orphan_retries: 0,
            syn_retries: 6,
            keepalive_intvl: Duration::from_secs(75),
            keepalive_probes: 9,
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
            keepalive_intvl: get("tcp_keepalive_intvl")
                .map_or(d.keepalive_intvl, Duration::from_secs),
            keepalive_probes: n("tcp_keepalive_probes", d.keepalive_probes),
        }
    }

    /// Read inside the network namespace `file` names (`None`: this process's).
    fn read_in(file: Option<&Path>) -> Option<Self> {
        let Some(path) = file else {
            return Some(Self::read());
        };
        let ns = std::fs::File::open(path).ok()?;
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
        let own = super::sockdiag::own_netns();
        let file = (netns != 0 && netns != own)
            .then(|| super::sockdiag::netns_file(netns))
            .flatten();
        let v = match (netns == 0 || netns == own, file) {
            (true, _) => NetSysctls::read(),
            (false, Some(f)) => NetSysctls::read_in(Some(&f)).unwrap_or_else(NetSysctls::read),
            (false, None) => NetSysctls::read(),
        };
        self.read.insert(netns, (Instant::now(), v));
        v
    }
}
