//! What this process may do: load and attach the programs (CAP_BPF + CAP_PERFMON, or
//! CAP_SYS_ADMIN), read tracefs (CAP_DAC_READ_SEARCH), read other processes' fds
//! (CAP_SYS_PTRACE), enter other network namespaces (CAP_SYS_ADMIN). Every missing one is
//! named at once; a refusal is one line.

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

/// This process holds CAP_SYS_ADMIN (enters other network namespaces).
pub fn has_sys_admin() -> bool {
    effective_caps() & (1 << CAP_SYS_ADMIN) != 0
}

/// True when this process may read any process's `/proc/PID/fd` (owners of sockets).
pub fn can_read_all_fds() -> bool {
    const CAP_SYS_PTRACE: u32 = 19;
    effective_caps() & (1 << CAP_SYS_PTRACE) != 0
}

/// A capability this process lacks, and what it buys.
struct Lack {
    caps: &'static str,
    buys: String,
}

/// Checks every privilege tcp-trace uses before it starts, and names all that are missing
/// at once: refuses (one line, [`NotPermitted`]) when the programs cannot be loaded, attached
/// or described, else warns once about those that only narrow what is seen. `owners`: the
/// command reads other processes' fds to find who holds a socket; `tracefs_denied`: tracefs
/// is mounted and this process may not list it.
pub fn preflight(owners: bool, tracefs_denied: bool) -> Result<()> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1 << c) != 0;
    let mut needed = Vec::new();
    if !has(CAP_SYS_ADMIN) {
        let lack = |c| (!has(c)).then_some(c);
        let names = match (lack(CAP_BPF), lack(CAP_PERFMON)) {
            (Some(_), Some(_)) => Some("CAP_BPF and CAP_PERFMON"),
            (Some(_), None) => Some("CAP_BPF"),
            (None, Some(_)) => Some("CAP_PERFMON"),
            (None, None) => None,
        };
        if let Some(caps) = names {
            needed.push(Lack {
                caps,
                buys: "to load and attach the kernel programs".into(),
            });
        }
        if let Some(level) = paranoid_refuses_perf() {
            needed.push(Lack {
                caps: "CAP_SYS_ADMIN",
                buys: format!(
                    "to attach tracepoints: this kernel's perf_event_paranoid is {level}; or \
                     `sysctl kernel.perf_event_paranoid=2`"
                ),
            });
        }
    }
    if !can_read_any_file() && tracefs_denied {
        needed.push(Lack {
            caps: "CAP_DAC_READ_SEARCH",
            buys: "to read the tracepoints' layouts in tracefs".into(),
        });
    }
    let mut optional = Vec::new();
    if owners && !can_read_all_fds() {
        optional.push(Lack {
            caps: "CAP_SYS_PTRACE",
            buys: "to name the owners of other users' sockets".into(),
        });
    }
    if !has(CAP_SYS_ADMIN) && needed.iter().all(|l| l.caps != "CAP_SYS_ADMIN") {
        optional.push(Lack {
            caps: "CAP_SYS_ADMIN",
            buys: "to list the sockets in other network namespaces, containers' too".into(),
        });
    }
    let list = |l: &[Lack]| {
        let each: Vec<_> = l
            .iter()
            .map(|l| format!("{} ({})", l.caps, l.buys))
            .collect();
        match each.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => String::new(),
        }
    };
    if needed.is_empty() {
        if !optional.is_empty() {
            log::warn!(
                "running without {}; grant {} to see those too",
                list(&optional),
                match optional.len() {
                    1 => "it",
                    _ => "them",
                }
            );
        }
        return Ok(());
    }
    let also = match optional.is_empty() {
        true => String::new(),
        false => format!("; also missing, optional: {}", list(&optional)),
    };
    Err(NotPermitted(format!(
        "missing {}{also}: run tcp-trace as root, or grant those capabilities",
        list(&needed)
    ))
    .into())
}

/// Debian's kernels (their `perf_event_paranoid` 3) refuse every perf event without
/// CAP_SYS_ADMIN, tracepoints included; upstream kernels treat 3 as 2. Found by trying the
/// most harmless event there is: a software dummy counting this process in user space.
/// The level when it refuses.
fn paranoid_refuses_perf() -> Option<i32> {
    let paranoid = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(2);
    if paranoid <= 2 {
        return None;
    }
    // SAFETY: perf_event_attr is plain data; zeroed is a valid value.
    let mut attr: PerfEventAttr = unsafe { std::mem::zeroed() };
    attr.size = std::mem::size_of::<PerfEventAttr>() as u32;
    attr.type_ = 1; // PERF_TYPE_SOFTWARE
    attr.config = 9; // PERF_COUNT_SW_DUMMY
    attr.flags = 1 | 1 << 5 | 1 << 6; // disabled, exclude_kernel, exclude_hv
                                      // SAFETY: a valid attr for this process (pid 0) on any CPU; the fd is closed at once.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &attr as *const PerfEventAttr,
            0,
            -1,
            -1,
            0,
        )
    };
    if fd >= 0 {
        // SAFETY: closing the fd just opened.
        unsafe { libc::close(fd as i32) };
        return None;
    }
    let refused = matches!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EACCES | libc::EPERM)
    );
    refused.then_some(paranoid)
}

/// The head of `struct perf_event_attr` (PERF_ATTR_SIZE_VER0): enough for the probe above.
#[repr(C)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
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
