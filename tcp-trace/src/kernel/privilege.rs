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

/// The lockdown mode this kernel runs in (`/sys/kernel/security/lockdown` lists the modes with
/// the current one in brackets: `none [integrity] confidentiality`); `None` without the LSM.
/// Where securityfs is not mounted (a container's fresh sysfs), it is mounted for the read and
/// unmounted again.
pub fn lockdown() -> Option<String> {
    const FILE: &str = "/sys/kernel/security/lockdown";
    let read = || Some(current_mode(&std::fs::read_to_string(FILE).ok()?)?.to_string());
    if std::path::Path::new(FILE).exists() {
        return read();
    }
    let dir = c"/sys/kernel/security";
    // SAFETY: valid NUL-terminated strings; no mount data.
    let mounted = unsafe {
        libc::mount(
            c"securityfs".as_ptr(),
            dir.as_ptr(),
            c"securityfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    } == 0;
    let mode = read();
    if mounted {
        // SAFETY: unmounting what was just mounted.
        unsafe { libc::umount2(dir.as_ptr(), libc::MNT_DETACH) };
    }
    mode
}

/// This process may read any file (CAP_DAC_READ_SEARCH or CAP_DAC_OVERRIDE).
pub fn can_read_any_file() -> bool {
    const CAP_DAC_OVERRIDE: u32 = 1;
    const CAP_DAC_READ_SEARCH: u32 = 2;
    effective_caps() & (1 << CAP_DAC_OVERRIDE | 1 << CAP_DAC_READ_SEARCH) != 0
}

fn current_mode(modes: &str) -> Option<&str> {
    modes
        .split_whitespace()
        .find_map(|m| m.strip_prefix('[')?.strip_suffix(']'))
}

/// Raises `RLIMIT_MEMLOCK` as far as allowed: kernels before 5.11 charge BPF maps and programs
/// to it, and its usual 64 KiB or 8 MiB is too little. Unlimited with CAP_SYS_RESOURCE; else
/// the soft limit up to the hard one.
pub fn raise_memlock() {
    let mut r = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit and getrlimit with a valid struct; a failure is named later, if
    // loading fails.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) != 0
            && libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) == 0
        {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &r);
        }
    }
}

/// `RLIMIT_MEMLOCK`'s soft limit in bytes (`None`: unlimited or unknown).
fn memlock_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a valid struct.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } == 0;
    (ok && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur)
}

/// Fails with [`NotPermitted`] on a kernel locked down for confidentiality: it refuses BPF
/// programs that read kernel memory and reading tracefs, both of which tcp-trace needs.
pub fn check_lockdown() -> Result<()> {
    if lockdown().as_deref() != Some("confidentiality") {
        return Ok(());
    }
    Err(NotPermitted(
        "this kernel is locked down (lockdown=confidentiality): it refuses tracefs and BPF \
         programs that read kernel memory, which tcp-trace needs; boot with lockdown=integrity \
         (or none)"
            .into(),
    )
    .into())
}

/// A refusal to load (maps or programs) that an older kernel's memlock accounting explains.
pub(crate) fn refused_by_memlock(e: &anyhow::Error) -> Option<NotPermitted> {
    let denied = e
        .chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.raw_os_error() == Some(libc::EPERM));
    let limit = memlock_limit()?;
    (denied && charges_memlock()).then(|| {
        NotPermitted(format!(
            "the kernel refused to load BPF and RLIMIT_MEMLOCK is {} KiB (kernels before 5.11 \
             charge BPF memory to it): run with `ulimit -l unlimited` or LimitMEMLOCK=infinity",
            limit / 1024
        ))
    })
}

/// Kernels before 5.11 charge BPF memory to `RLIMIT_MEMLOCK`.
fn charges_memlock() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    (v.next().unwrap_or(0), v.next().unwrap_or(0)) < (5, 11)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lockdown_mode_is_the_bracketed_one() {
        assert_eq!(
            current_mode("none [integrity] confidentiality\n"),
            Some("integrity")
        );
        assert_eq!(
            current_mode("[none] integrity confidentiality"),
            Some("none")
        );
        assert_eq!(
            current_mode("none integrity [confidentiality]"),
            Some("confidentiality")
        );
        assert_eq!(current_mode(""), None);
    }
}
