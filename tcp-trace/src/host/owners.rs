//! Who holds a socket, found the way `ss -p` finds it: socket inodes mapped through
//! `/proc/PID/fd`; and what names a process's container (its cgroup and network namespace).

use std::collections::{HashMap, HashSet};

use crate::{
    event::{Comm, Owner},
    host::sockdiag::netns_inode,
};

/// A process holding a socket.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// Process name (`/proc/PID/comm`).
    pub comm: Comm,
    /// File descriptor number.
    pub fd: i32,
    /// The process's cgroup v2 path (`/proc/PID/cgroup`), which names its container.
    #[serde(default)]
    pub cgroup: Option<String>,
    /// The process's network namespace inode (`/proc/PID/ns/net`).
    #[serde(default)]
    pub netns: Option<u64>,
}

impl Holder {
    /// The holder as a socket's owner.
    pub fn owner(&self) -> Owner {
        Owner {
            pid: self.pid,
            comm: self.comm,
        }
    }
}

/// A process's cgroup v2 path.
pub fn cgroup_of(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// A process's network namespace inode.
pub fn netns_of(pid: i32) -> Option<u64> {
    netns_inode(format!("/proc/{pid}/ns/net")).map(u64::from)
}

/// For each wanted inode, every (pid, comm, fd) that has it open. Processes that vanish or
/// cannot be read are skipped.
pub fn holders(inodes: &HashSet<u32>) -> HashMap<u32, Vec<Holder>> {
    let mut found: HashMap<u32, Vec<Holder>> = HashMap::new();
    if inodes.is_empty() {
        return found;
    }
    let Ok(procs) = procfs::process::all_processes() else {
        return found;
    };
    for p in procs.flatten() {
        let Ok(fds) = p.fd() else { continue };
        let mut comm = None;
        for fd in fds.flatten() {
            if let procfs::process::FDTarget::Socket(ino) = fd.target {
                let Ok(ino) = u32::try_from(ino) else {
                    continue;
                };
                if inodes.contains(&ino) {
                    let comm = *comm.get_or_insert_with(|| {
                        let raw =
                            std::fs::read(format!("/proc/{}/comm", p.pid)).unwrap_or_default();
                        Comm::from_bytes(raw.strip_suffix(b"\n").unwrap_or(&raw))
                    });
                    found.entry(ino).or_default().push(Holder {
                        pid: p.pid as u32,
                        comm,
                        fd: fd.fd,
                        cgroup: cgroup_of(p.pid),
                        netns: netns_of(p.pid),
                    });
                }
            }
        }
    }
    for list in found.values_mut() {
        list.sort_by_key(|h| (h.pid, h.fd));
    }
    found
}
