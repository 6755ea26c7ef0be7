//! Output: one human line or one NDJSON object per item, one file per command's format.
//!
//! A closed pipe (`| head`) is not an error for the user: [`is_broken_pipe`] lets the caller
//! stop quietly with status 0.

pub mod halfopen;
pub mod life;
pub mod metrics;
pub mod stuck;
pub mod watch;

use std::io;

use serde::Serialize;

use crate::event::{Place, Tuple};

/// True when an error (anywhere in its chain) is EPIPE.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// The fields every JSON object about one connection starts with (flattened into it): the
/// same names and meanings as in `watch --json`.
#[derive(Serialize)]
pub struct JsonConn {
    sock: Option<String>,
    family: &'static str,
    saddr: String,
    sport: u16,
    daddr: String,
    dport: u16,
    pid: Option<u32>,
    comm: Option<String>,
    netns: Option<u32>,
    cgroup: Option<String>,
    cgroup_id: Option<u64>,
}

impl JsonConn {
    /// A connection's socket (0 or `None`: unknown), endpoints and owner.
    pub fn new(sock: Option<u64>, t: &Tuple, pid: Option<u32>, comm: Option<String>) -> Self {
        Self {
            sock: sock.filter(|s| *s != 0).map(sock_hex),
            family: crate::event::family_name(&t.saddr),
            saddr: t.saddr.to_string(),
            sport: t.sport,
            daddr: t.daddr.to_string(),
            dport: t.dport,
            pid,
            comm,
            netns: None,
            cgroup: None,
            cgroup_id: None,
        }
    }

    /// Adds the socket's network namespace and cgroup (0 / `None`: unknown).
    pub fn placed(mut self, place: Place, cgroup: Option<&str>) -> Self {
        self.netns = (place.netns != 0).then_some(place.netns);
        self.cgroup_id = (place.cgroup != 0).then_some(place.cgroup);
        self.cgroup = cgroup.map(str::to_string);
        self
    }
}

/// The kernel socket id as printed (`0xffff…`).
pub fn sock_hex(sock: u64) -> String {
    format!("{sock:#x}")
}
