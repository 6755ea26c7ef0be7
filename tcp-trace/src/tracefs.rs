//! The running kernel's tracepoint formats, checked against the layouts the kernel programs
//! were compiled with (`tcp_trace_common::layout`).

use std::{fs, path::Path};

use anyhow::{Context, Result};
use tcp_trace_common::layout::{Field, Tracepoint};

/// Where tracefs is mounted (or auto-mounted under debugfs).
pub const ROOTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Mounts tracefs at `/sys/kernel/tracing` when no tracefs is reachable; a tracefs that is
/// mounted but unreadable (mode 0700: not root) is a privilege error, named as such.
pub fn ensure_mounted() -> Result<&'static str> {
    if let Some(r) = ROOTS.iter().find(|r| Path::new(r).join("events").is_dir()) {
        return Ok(r);
    }
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mounted = |r: &str| {
        mounts
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some(r))
    };
    if let Some(r) = ROOTS.iter().find(|r| mounted(r)) {
        return Err(crate::source::NotPermitted(format!(
            "cannot read tracefs at {r}: tcp-trace needs CAP_DAC_READ_SEARCH (or root)"
        ))
        .into());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "nodev", ROOTS[0]])
        .status()
        .context("running mount -t tracefs")?;
    anyhow::ensure!(
        status.success() && Path::new(ROOTS[0]).join("events").is_dir(),
        "tracefs is not mounted and `mount -t tracefs nodev {}` failed",
        ROOTS[0]
    );
    Ok(ROOTS[0])
}

/// One `field:` line of a format file.
#[derive(Debug, PartialEq, Eq)]
pub struct FormatField {
    /// Field name (array suffix removed).
    pub name: String,
    /// Offset.
    pub offset: usize,
    /// Size.
    pub size: usize,
}

/// Parses the `field:` lines of a tracepoint `format` file.
pub fn parse_format(text: &str) -> Vec<FormatField> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let decl = line.strip_prefix("field:")?;
            let mut parts = decl.split(';').map(str::trim);
            let decl = parts.next()?;
            let name = decl.rsplit([' ', '*']).next()?;
            let name = name.split('[').next()?.to_string();
            let mut offset = None;
            let mut size = None;
            for p in parts {
                if let Some(v) = p.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = p.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            Some(FormatField {
                name,
                offset: offset?,
                size: size?,
            })
        })
        .collect()
}

/// Result of checking one tracepoint.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Every field matches; `optional` tells whether the optional field exists and matches.
    Ok {
        /// The optional field is present with the expected layout.
        optional: bool,
    },
    /// The tracepoint does not exist on this kernel.
    Missing,
    /// A field differs; the message names it.
    Differs(String),
}

/// Compares a tracepoint's expected fields with the parsed format.
pub fn compare(tp: &Tracepoint, fields: &[FormatField]) -> Check {
    let find = |f: &Field| fields.iter().find(|x| x.name == f.name);
    for f in tp.fields {
        match find(f) {
            None => {
                return Check::Differs(format!(
                    "{}/{}: field `{}` is missing",
                    tp.category, tp.name, f.name
                ))
            }
            Some(x) if x.offset != f.offset || x.size != f.size => {
                return Check::Differs(format!(
                    "{}/{}: field `{}` is at offset {} size {} on this kernel, tcp-trace was built for offset {} size {}",
                    tp.category, tp.name, f.name, x.offset, x.size, f.offset, f.size
                ))
            }
            Some(_) => {}
        }
    }
    let optional = tp
        .optional
        .is_some_and(|(f, _)| find(&f).is_some_and(|x| x.offset == f.offset && x.size == f.size));
    Check::Ok { optional }
}

/// Checks one tracepoint against the kernel under `root`.
pub fn check(root: &str, tp: &Tracepoint) -> Check {
    let path = Path::new(root)
        .join("events")
        .join(tp.category)
        .join(tp.name)
        .join("format");
    match fs::read_to_string(&path) {
        Ok(text) => compare(tp, &parse_format(&text)),
        Err(_) => Check::Missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcp_trace_common::layout::TRACEPOINTS;

    const SET_STATE: &str = "name: inet_sock_set_state
ID: 1234
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"...\"
";

    #[test]
    fn parses_fields() {
        let f = parse_format(SET_STATE);
        assert_eq!(f.len(), 12);
        assert_eq!(
            f[1],
            FormatField {
                name: "skaddr".into(),
                offset: 8,
                size: 8
            }
        );
        assert_eq!(f[11].name, "daddr_v6");
    }

    #[test]
    fn matching_layout_is_ok() {
        assert_eq!(
            compare(&TRACEPOINTS[0], &parse_format(SET_STATE)),
            Check::Ok { optional: false }
        );
    }

    #[test]
    fn a_shifted_field_is_named() {
        // A pre-5.6 kernel: protocol was a u8, so everything after it moves.
        let old = SET_STATE.replace(
            "__u16 protocol;\toffset:30;\tsize:2",
            "__u8 protocol;\toffset:30;\tsize:1",
        );
        match compare(&TRACEPOINTS[0], &parse_format(&old)) {
            Check::Differs(m) => assert!(m.contains("`protocol`"), "{m}"),
            other => panic!("{other:?}"),
        }
        let gone = SET_STATE.replace("newstate", "new_state");
        match compare(&TRACEPOINTS[0], &parse_format(&gone)) {
            Check::Differs(m) => assert!(m.contains("`newstate` is missing"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    /// The layouts compiled into the kernel programs match this machine's kernel.
    #[test]
    fn this_kernel_matches_when_tracefs_is_readable() {
        let Some(root) = ROOTS
            .iter()
            .find(|r| Path::new(r).join("events/sock").is_dir())
        else {
            // Outside CI a non-root `cargo test` may lack tracefs; under CI that is a failure.
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "tracefs not readable"
            );
            return;
        };
        for tp in TRACEPOINTS {
            match check(root, tp) {
                Check::Ok { .. } | Check::Missing => {}
                Check::Differs(m) => panic!("{m}"),
            }
        }
    }
}
