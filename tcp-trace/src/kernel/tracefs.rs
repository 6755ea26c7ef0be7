//! The running kernel's tracepoint formats, fitted to the layouts the kernel programs were
//! compiled with (`tcp_trace_common::layout`).

use std::{fs, path::Path};

use anyhow::Result;
use tcp_trace_common::layout::{Field, Tracepoint, MAX_SHIFT};

use crate::event::ResetReasons;

/// Where tracefs is mounted (or auto-mounted under debugfs); tcp-trace mounts the first.
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
        let why = match fs::read_dir(r) {
            Err(e) if super::privilege::can_read_any_file() => format!("{e}"),
            _ => "tcp-trace needs CAP_DAC_READ_SEARCH (or root)".into(),
        };
        return Err(
            super::privilege::NotPermitted(format!("cannot read tracefs at {r}: {why}")).into(),
        );
    }
    // No `mount` binary needed (a minimal container image has none).
    // SAFETY: valid NUL-terminated strings; no mount data.
    let r = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    };
    let why = match r {
        0 => "no events directory in it".to_string(),
        _ => std::io::Error::last_os_error().to_string(),
    };
    if r != 0 || !Path::new(ROOTS[0]).join("events").is_dir() {
        anyhow::bail!(
            "tracefs is not mounted and mounting it at {} failed ({why}): mount it \
             (`mount -t tracefs nodev {0}`), or in a container bind-mount the host's {0}",
            ROOTS[0]
        );
    }
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

/// The names a format file's `print fmt` gives the values of `field`: the `{ value, "NAME" }`
/// pairs of its `__print_symbolic(REC->field, …)`, in order. A value the kernel left as a
/// symbol (an enum it did not resolve to its number) is skipped.
pub fn print_symbols(text: &str, field: &str) -> Vec<(u64, String)> {
    let Some(fmt) = text.lines().find_map(|l| l.strip_prefix("print fmt:")) else {
        return Vec::new();
    };
    let target = format!("REC->{field}");
    let Some(mut rest) = fmt.split("__print_symbolic(").skip(1).find_map(|s| {
        let s = s.trim_start().strip_prefix(&target)?.trim_start();
        s.strip_prefix(',')
    }) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // `{ 0, "NOT_SPECIFIED" }, { 1, "NO_SOCKET" }, … )`: anything but a `{` ends the list.
    while let Some(body) = rest.trim_start_matches([' ', '\t', ',']).strip_prefix('{') {
        let Some((pair, after)) = body.split_once('}') else {
            break;
        };
        rest = after;
        let Some((value, name)) = pair.split_once(',') else {
            continue;
        };
        let value = value.trim();
        let value = match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => value.parse().ok(),
        };
        let name = name
            .trim()
            .strip_prefix('"')
            .and_then(|n| n.strip_suffix('"'));
        if let (Some(value), Some(name)) = (value, name) {
            out.push((value, name.to_string()));
        }
    }
    out
}

/// The running kernel's names of its reset reasons (`enum sk_rst_reason`), as its
/// `tcp_send_reset` prints them; empty where that tracepoint has no reason (before Linux
/// 6.10) or tracefs is not readable.
pub fn reset_reasons() -> ResetReasons {
    let Some(text) = ROOTS.iter().find_map(|r| {
        fs::read_to_string(Path::new(r).join("events/tcp/tcp_send_reset/format")).ok()
    }) else {
        return ResetReasons::default();
    };
    print_symbols(&text, "reason")
        .into_iter()
        .filter_map(|(v, name)| Some((u32::try_from(v).ok()?, name)))
        .collect()
}

/// tracefs is mounted where tcp-trace looks and this process may not list it (mode 0700).
pub fn denied() -> bool {
    ROOTS
        .iter()
        .any(|r| fs::read_dir(r).is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied))
}

/// Result of checking one program's layout against the running kernel.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Every field is where the program expects it, `shift` bytes later than compiled;
    /// `optional` tells whether the optional field is there too.
    Ok {
        /// Bytes to add to every compiled offset.
        shift: u8,
        /// The optional field is present with the expected layout.
        optional: bool,
    },
    /// The tracepoint does not exist on this kernel.
    Missing,
    /// A field is missing or moved differently from the others; the message names it.
    Differs(String),
}

/// Fits a program's fields to the parsed format: one shift for all of them (the first field
/// gives it).
pub fn compare(tp: &Tracepoint, fields: &[FormatField]) -> Check {
    let find = |f: &Field| fields.iter().find(|x| x.name == f.name);
    let name = format!("{}/{}", tp.category, tp.name);
    let Some(first) = tp.fields.first().and_then(|f| find(f).map(|x| (f, x))) else {
        return Check::Differs(format!("{name}: field `{}` is missing", tp.fields[0].name));
    };
    let shift = first.1.offset.wrapping_sub(first.0.offset);
    if first.1.offset < first.0.offset || shift > MAX_SHIFT {
        return Check::Differs(format!(
            "{name}: field `{}` is at offset {}, tcp-trace reads it at {} to {}",
            first.0.name,
            first.1.offset,
            first.0.offset,
            first.0.offset + MAX_SHIFT
        ));
    }
    let fits = |f: &Field, x: &FormatField| x.offset == f.offset + shift && x.size == f.size;
    for f in tp.fields {
        match find(f) {
            None => return Check::Differs(format!("{name}: field `{}` is missing", f.name)),
            Some(x) if !fits(f, x) => {
                return Check::Differs(format!(
                    "{name}: field `{}` is at offset {} size {} on this kernel, tcp-trace reads \
                     it at offset {} size {}",
                    f.name,
                    x.offset,
                    x.size,
                    f.offset + shift,
                    f.size
                ))
            }
            Some(_) => {}
        }
    }
    let optional = tp
        .optional
        .is_some_and(|(f, _)| find(&f).is_some_and(|x| fits(&f, x)));
    Check::Ok {
        shift: shift as u8,
        optional,
    }
}

/// Checks one program's layout against the kernel under `root`.
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
            Check::Ok {
                shift: 0,
                optional: false
            }
        );
    }

    /// A PREEMPT_RT kernel's header has one more byte field, padded to 16: every field moves
    /// by 8, and the program reads them all 8 bytes later.
    #[test]
    fn a_longer_header_shifts_every_field() {
        let mut rt = String::new();
        for line in SET_STATE.lines() {
            let moved = line.split_once("offset:").and_then(|(head, rest)| {
                let (n, tail) = rest.split_once(';')?;
                let n: usize = n.parse().ok()?;
                Some(format!(
                    "{head}offset:{};{tail}",
                    if n >= 8 { n + 8 } else { n }
                ))
            });
            rt.push_str(&moved.unwrap_or_else(|| line.to_string()));
            rt.push('\n');
        }
        assert_eq!(
            compare(&TRACEPOINTS[0], &parse_format(&rt)),
            Check::Ok {
                shift: 8,
                optional: false
            }
        );
        // One field moved by a different amount is named, not read from the wrong place.
        let odd = rt.replace("offset:32;", "offset:34;");
        match compare(&TRACEPOINTS[0], &parse_format(&odd)) {
            Check::Differs(m) => assert!(m.contains("`sport`"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    /// On a PREEMPT_RT kernel a record whose first field is an `int` moves by 4, not 8.
    #[test]
    fn a_record_may_move_by_four() {
        let rt = "format:
\tfield:unsigned char common_preempt_lazy_count;\toffset:8;\tsize:1;\tsigned:0;
\tfield:int error;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:16;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:18;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:20;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:22;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:24;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:32;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:48;\tsize:16;\tsigned:0;
";
        let tp = TRACEPOINTS
            .iter()
            .find(|t| t.name == "inet_sk_error_report")
            .unwrap();
        assert_eq!(
            compare(tp, &parse_format(rt)),
            Check::Ok {
                shift: 4,
                optional: false
            }
        );
    }

    /// `tcp_send_reset` as Linux 6.1 has it (no `reason`, plain endpoints) and as 6.18 has it.
    const RESET_6_1: &str = "format:
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:38;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:58;\tsize:16;\tsigned:0;
";
    const RESET_6_18: &str = "format:
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;
";

    #[test]
    fn each_reset_layout_has_its_program() {
        let programs: Vec<_> = TRACEPOINTS
            .iter()
            .filter(|t| t.name == "tcp_send_reset")
            .collect();
        let fits = |text: &str| -> Vec<&str> {
            programs
                .iter()
                .filter(|t| matches!(compare(t, &parse_format(text)), Check::Ok { .. }))
                .map(|t| t.program)
                .collect()
        };
        assert_eq!(fits(RESET_6_18), ["tcp_send_reset"]);
        assert_eq!(fits(RESET_6_1), ["tcp_send_reset_v1"]);
        match compare(programs[0], &parse_format(RESET_6_1)) {
            Check::Differs(m) => assert!(m.contains("`reason` is missing"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    /// The `print fmt` of 6.18's `tcp_send_reset` (this machine's, cut to its first reasons,
    /// with two made-up ones: a hex value and one left as a symbol).
    const RESET_6_18_PRINT: &str = r#"print fmt: "skbaddr=%p skaddr=%p src=%pISpc dest=%pISpc state=%s reason=%s", REC->skbaddr, REC->skaddr, REC->saddr, REC->daddr, REC->state ? __print_symbolic(REC->state, { TCP_ESTABLISHED, "TCP_ESTABLISHED" }, { TCP_SYN_SENT, "TCP_SYN_SENT" }, { TCP_NEW_SYN_RECV, "TCP_NEW_SYN_RECV" }) : "UNKNOWN", __print_symbolic(REC->reason, { 0, "NOT_SPECIFIED" }, { 1, "NO_SOCKET" }, { 11, "TCP_ABORT_ON_CLOSE" }, { 0x1a, "HEX" }, { SK_RST_REASON_X, "X" }, { 25, "MAX" })"#;

    #[test]
    fn reset_reasons_come_from_the_print_fmt() {
        let text = format!("{RESET_6_18}\n{RESET_6_18_PRINT}\n");
        let got = print_symbols(&text, "reason");
        let got: Vec<(u64, &str)> = got.iter().map(|(n, s)| (*n, s.as_str())).collect();
        assert_eq!(
            got,
            [
                (0, "NOT_SPECIFIED"),
                (1, "NO_SOCKET"),
                (11, "TCP_ABORT_ON_CLOSE"),
                (26, "HEX"),
                (25, "MAX")
            ]
        );
        // `state`'s symbols are the kernel's macros, not numbers: none taken.
        assert!(print_symbols(&text, "state").is_empty());
        // 6.1's record has no reason; a format without `print fmt` has nothing.
        let v6_1 = format!(
            "{RESET_6_1}\nprint fmt: \"skbaddr=%p state=%s\", REC->skbaddr, \
             __print_symbolic(REC->state, {{ TCP_CLOSE, \"TCP_CLOSE\" }})\n"
        );
        assert!(print_symbols(&v6_1, "reason").is_empty());
        assert!(print_symbols(RESET_6_18, "reason").is_empty());
    }

    /// This machine's kernel names its reset reasons where its tracepoint has them.
    #[test]
    fn this_kernel_names_its_reset_reasons_when_it_has_them() {
        let format = ROOTS.iter().find_map(|r| {
            fs::read_to_string(Path::new(r).join("events/tcp/tcp_send_reset/format")).ok()
        });
        let Some(format) = format else {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "tracefs not readable"
            );
            return;
        };
        let names = reset_reasons();
        if format.contains(" reason;") {
            assert_eq!(names.name(0), Some("NOT_SPECIFIED"), "{format}");
            assert!(
                (1..64).any(|n| names.name(n) == Some("TCP_ABORT_ON_CLOSE")),
                "{format}"
            );
        } else {
            assert!(names.is_empty());
        }
    }

    /// Linux 5.10's `tcp` records (Debian 11's cloud kernel): no `family`.
    const RETRANSMIT_5_10: &str = "format:
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
";
    const SYNACK_5_10: &str = "format:
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * req;\toffset:16;\tsize:8;\tsigned:0;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:36;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:52;\tsize:16;\tsigned:0;
";
    const RECEIVE_RESET_5_10: &str = "format:
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 sport;\toffset:16;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:18;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:20;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:24;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:28;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:44;\tsize:16;\tsigned:0;
\tfield:__u64 sock_cookie;\toffset:64;\tsize:8;\tsigned:0;
";

    #[test]
    fn linux_5_10s_records_without_family_have_their_programs() {
        let fits = |name: &str, text: &str| -> Vec<(&str, u8)> {
            TRACEPOINTS
                .iter()
                .filter(|t| t.name == name)
                .filter_map(|t| match compare(t, &parse_format(text)) {
                    Check::Ok { shift, .. } => Some((t.program, shift)),
                    _ => None,
                })
                .collect()
        };
        // PREEMPT_RT's longer header moves every field by 8.
        let rt = |text: &str| {
            let mut out = String::new();
            for line in text.lines() {
                match line.split_once("offset:") {
                    Some((head, rest)) => {
                        let (n, tail) = rest.split_once(';').unwrap();
                        let n: usize = n.parse().unwrap();
                        out.push_str(&format!("{head}offset:{};{tail}\n", n + 8));
                    }
                    None => out.push_str(&format!("{line}\n")),
                }
            }
            out
        };
        for (shift, text) in [(0, RETRANSMIT_5_10.to_string()), (8, rt(RETRANSMIT_5_10))] {
            let text = text.as_str();
            assert_eq!(
                fits("tcp_retransmit_skb", text),
                [("tcp_retransmit_skb_v0", shift)]
            );
            // The same fields after the packet: the reset's record.
            assert_eq!(fits("tcp_send_reset", text), [("tcp_send_reset_v0", shift)]);
        }
        for (shift, text) in [(0, SYNACK_5_10.to_string()), (8, rt(SYNACK_5_10))] {
            assert_eq!(
                fits("tcp_retransmit_synack", &text),
                [("tcp_retransmit_synack_v0", shift)]
            );
        }
        for (shift, text) in [
            (0, RECEIVE_RESET_5_10.to_string()),
            (8, rt(RECEIVE_RESET_5_10)),
        ] {
            assert_eq!(
                fits("tcp_receive_reset", &text),
                [("tcp_receive_reset_v0", shift)]
            );
        }
        // And the newer records still take the newer programs only.
        assert_eq!(
            fits("tcp_send_reset", RESET_6_1),
            [("tcp_send_reset_v1", 0)]
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

    /// The layouts compiled into the kernel programs fit this machine's kernel.
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
        // Of the programs for one tracepoint, one fits (or the tracepoint does not exist).
        for tp in TRACEPOINTS {
            let mut why = Vec::new();
            let fits = TRACEPOINTS
                .iter()
                .filter(|t| t.category == tp.category && t.name == tp.name)
                .any(|t| match check(root, t) {
                    Check::Ok { .. } | Check::Missing => true,
                    Check::Differs(m) => {
                        why.push(m);
                        false
                    }
                });
            assert!(fits, "{why:?}");
        }
    }
}
