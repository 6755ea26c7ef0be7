//! What this process may do: load and attach the programs (CAP_BPF + CAP_PERFMON, or
//! CAP_SYS_ADMIN), read other processes' fds (CAP_SYS_PTRACE). A refusal is one line naming
//! the capability or sysctl.

use anyhow::Result;

/// A privilege problem, reported as one line with exit status 2.
#[derive(Debug)]
pub struct NotPermitted(pub String);

impl std::fmt::Display for NotPermitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotPermitted {}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process (from `/proc/self/status`).
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// True when this process may read any process's `/proc/PID/fd` (owners of sockets).
pub fn can_read_all_fds() -> bool {
    const CAP_SYS_PTRACE: u32 = 19;
    effective_caps() & (1 << CAP_SYS_PTRACE) != 0
}

/// Fails with [`NotPermitted`] unless the process may load and attach tracing programs.
pub fn check_privileges() -> Result<()> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .iter()
        .filter(|(c, _)| !has(*c))
        .map(|(_, n)| *n)
        .collect();
    Err(NotPermitted(format!(
        "loading the kernel programs needs {}: run tcp-trace as root (or grant those capabilities)",
        missing.join(" and ")
    ))
    .into())
}

/// Debian's kernels add `perf_event_paranoid` 3 (their default): no perf event, tracepoints
/// included, without CAP_SYS_ADMIN, whatever CAP_PERFMON says. An attach refused for lack of
/// permission there is that.
pub(crate) fn refused_by_paranoia(e: &anyhow::Error) -> Option<NotPermitted> {
    let denied = e
        .chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| matches!(io.raw_os_error(), Some(libc::EACCES | libc::EPERM)));
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()?;
    let admin = effective_caps() & (1 << CAP_SYS_ADMIN) != 0;
    (denied && paranoid > 2 && !admin).then(|| {
        NotPermitted(format!(
            "this kernel's perf_event_paranoid is {paranoid}: attaching tracepoints needs \
             CAP_SYS_ADMIN here (or `sysctl kernel.perf_event_paranoid=2`)"
        ))
    })
}
