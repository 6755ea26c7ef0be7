//! Where events come from: the kernel programs (load, check, attach, drain the ring buffer).
//!
//! The kernel programs submit without ever waking us (deciding on a wake-up per event is a
//! measurable share of their budget: README, "Performance"), so the reader drains everything
//! queued on a short timer (`Options::poll`), one batch at a time.

pub mod btf;
pub mod privilege;
pub mod tracefs;

use std::{
    os::fd::{AsFd, AsRawFd, RawFd},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use tcp_trace_common::{
    layout::{self, Tracepoint, TRACEPOINTS},
    names, KernelOffsets, SockOffsets,
};

use self::{
    privilege::{check_lockdown, raise_memlock, refused_by_memlock, refused_by_paranoia},
    tracefs::Check,
};
use crate::event::{decode, Delivery, ResetReasons};

/// Checks every privilege tcp-trace uses before it starts (see [`privilege::preflight`]).
/// `owners`: the command looks up who holds a socket in other processes' fds.
pub fn preflight(owners: bool) -> Result<()> {
    privilege::preflight(owners, tracefs::denied())
}

/// Knobs for loading the kernel side.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Ring buffer size in bytes (power of two, ≥ page size).
    pub ringbuf_bytes: u32,
    /// How often to drain when no wake-up arrives.
    pub poll: Duration,
    /// In-kernel filter: only this local or remote port.
    pub port: Option<u16>,
    /// In-kernel filter: only this local port.
    pub sport: Option<u16>,
    /// In-kernel filter: only this remote port.
    pub dport: Option<u16>,
    /// In-kernel filter: only this address family (`AF_INET`/`AF_INET6`).
    pub family: Option<u16>,
    /// In-kernel filter: only sockets in this network namespace (inode).
    pub netns: Option<u32>,
    /// In-kernel filter: only sockets in this cgroup (id, level) or below it.
    pub cgroup: Option<(u64, u32)>,
    /// Read each socket's namespace and cgroup for the output (at its birth); off, they are
    /// read only for the `netns`/`cgroup` filters (the reads are dear on connection churn).
    pub place: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ringbuf_bytes: 4 << 20,
            poll: Duration::from_millis(50),
            port: None,
            sport: None,
            dport: None,
            family: None,
            netns: None,
            cgroup: None,
            place: true,
        }
    }
}

/// The loaded and attached kernel programs and their ring buffer.
pub struct KernelSource {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    lost_reported: u64,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    tick: tokio::time::Interval,
    /// Records decoded and handed on.
    pub delivered: u64,
    /// Undecodable records seen (should stay 0; counted, never fatal).
    pub undecodable: u64,
    /// Tracepoints attached.
    pub attached: Vec<&'static str>,
    /// The programs' fds, for the runs the kernel skipped (see [`skipped_runs`]).
    programs: Vec<RawFd>,
    /// Skipped runs as last read, and when.
    skipped: (u64, Option<Instant>),
    /// This kernel's names of its reset reasons.
    reset_reasons: ResetReasons,
    // Dropped last: dropping it detaches every program.
    _ebpf: Ebpf,
}

/// An error and its causes on one line, a verifier's log cut to its verdict (the whole log is
/// logged at debug level: `RUST_LOG=debug`).
fn one_line(e: &anyhow::Error) -> String {
    log::debug!("{e:#}");
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        parts.push(short_error(cause));
    }
    parts.dedup();
    parts.join(": ")
}

/// An aya error on one line: a verifier log is cut to its verdict (its last line).
fn short_error(e: &dyn std::error::Error) -> String {
    let text = e.to_string();
    match text.split_once("Verifier output:") {
        Some((head, log)) => {
            let verdict = log
                .lines()
                .map(str::trim)
                .rfind(|l| {
                    !l.is_empty()
                        && !l.starts_with("verification time")
                        && !l.starts_with("stack depth")
                        && !l.starts_with("processed")
                })
                .unwrap_or("");
            format!("{}verifier: {verdict}", head.trim_end())
        }
        None => text,
    }
}

/// Where the kernel programs find a socket's namespace and cgroup. Without kernel BTF, events
/// carry neither (a warning), and `--netns`/`--cgroup` cannot run.
fn kernel_offsets(opts: &Options) -> Result<(KernelOffsets, SockOffsets)> {
    let (offsets, sock) = match crate::kernel::btf::Btf::kernel() {
        Ok(btf) => (btf.kernel_offsets(), btf.sock_offsets()),
        Err(e) => {
            log::warn!(
                "{e:#}: events carry no network namespace or cgroup, resets sent by listeners \
                 name no peer, errors reported after a disconnect join no socket, and a \
                 closing socket's own error is not read (causes rest on the error reports)"
            );
            Default::default()
        }
    };
    if opts.netns.is_some() && offsets.sock_net == 0 {
        bail!("--netns: this kernel's BTF does not show where a socket's namespace is");
    }
    if opts.cgroup.is_some() && offsets.sock_cgroup == 0 {
        bail!("--cgroup: this kernel's BTF does not show a socket's cgroup");
    }
    Ok((offsets, sock))
}

/// Loads and attaches a BTF-typed tracepoint program; the kernel's BTF is parsed on first use.
fn attach_btf(
    ebpf: &mut Ebpf,
    btf: &mut Option<aya::Btf>,
    program: &str,
    tracepoint: &str,
) -> Result<()> {
    let btf = match btf {
        Some(b) => b,
        None => btf.insert(aya::Btf::from_sys_fs().context("reading the kernel's BTF")?),
    };
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from the eBPF object"))?
        .try_into()?;
    prog.load(tracepoint, btf)
        .map_err(|e| anyhow::anyhow!("{}", short_error(&e)))?;
    prog.attach()?;
    Ok(())
}

/// Runs of these programs the kernel skipped: it runs no tracing program on a CPU where one
/// is already running (an interrupt or, on PREEMPT_RT, a preemption in the middle of one —
/// ours or another tool's), and counts the skip in the program's `recursion_misses` (for
/// classic tracepoints since Linux 6.7; before, the skip leaves no trace).
fn skipped_runs(programs: &[RawFd]) -> u64 {
    programs
        .iter()
        .filter_map(|fd| std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok())
        .filter_map(|info| recursion_misses(&info))
        .sum()
}

/// The `recursion_misses` of a BPF program's fdinfo (absent before Linux 5.12).
fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A program to attach, fitted to this kernel's record layout.
struct Planned {
    tp: &'static Tracepoint,
    shift: u8,
    optional: bool,
}

/// For each tracepoint, the first of its programs whose fields this kernel's `format` file
/// has, and what the user loses where there is none or only an older one. The first tracepoint
/// is required; without one of the others the rest runs.
fn plan(root: &str) -> Result<(Vec<Planned>, Vec<String>)> {
    let mut notes = Vec::new();
    let mut plan = Vec::new();
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for tp in TRACEPOINTS {
        if seen.contains(&(tp.category, tp.name)) {
            continue;
        }
        seen.push((tp.category, tp.name));
        let mut why = None;
        let alternatives = TRACEPOINTS
            .iter()
            .filter(|t| (t.category, t.name) == (tp.category, tp.name));
        for alt in alternatives {
            match tracefs::check(root, alt) {
                Check::Ok { shift, optional } => {
                    if !alt.partial.is_empty() {
                        notes.push(alt.partial.to_string());
                    }
                    plan.push(Planned {
                        tp: alt,
                        shift,
                        optional,
                    });
                    why = None;
                    break;
                }
                Check::Missing => {
                    why = Some(format!(
                        "tracepoint {}/{} does not exist on this kernel",
                        tp.category, tp.name
                    ))
                }
                // The first mismatch names the newest layout's field: the most useful.
                Check::Differs(m) => why = why.or(Some(format!("unknown layout: {m}"))),
            }
        }
        match why {
            None => {}
            Some(why) if tp.loses.is_empty() => bail!("unsupported kernel: {why}"),
            Some(why) => notes.push(format!("{why}: {}", tp.loses)),
        }
    }
    Ok((plan, notes))
}

/// The eBPF object built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcp-trace"));

fn aya_log_level() -> u8 {
    // aya_log_common::Level: Error = 1 … Trace = 5; 0 turns kernel logging off.
    match log::max_level() {
        log::LevelFilter::Off => 0,
        l => l as u8,
    }
}

impl KernelSource {
    /// Checks lockdown and layouts, loads, attaches; warns (one line each) about tracepoints
    /// this kernel lacks. (Capabilities are checked before, with what the command needs:
    /// [`privilege::preflight`].)
    pub fn open(opts: Options) -> Result<Self> {
        check_lockdown()?;
        raise_memlock();
        let root = tracefs::ensure_mounted()?;
        if let Ok(false) = aya::sys::is_map_supported(aya::maps::MapType::RingBuf) {
            bail!("this kernel has no BPF ring buffer: tcp-trace needs Linux 5.8 or later");
        }
        // What this kernel cannot give is said once the programs are running (a refusal to
        // start stays one line).
        let (plan, notes) = plan(root)?;
        let shifts = plan
            .iter()
            .fold(0u64, |acc, p| acc | u64::from(p.shift) << (8 * p.tp.slot));
        let has_err = plan.iter().any(|p| p.tp.optional.is_some() && p.optional);
        let page = 4096u32;
        let size = opts.ringbuf_bytes.max(page).next_power_of_two();
        let level = aya_log_level();
        let (offsets, sock) = kernel_offsets(&opts)?;
        let (cg_id, cg_level) = opts.cgroup.unwrap_or((0, 0));
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::EVENTS, size)
            .override_global(names::FILTER_PORT, &opts.port.unwrap_or(0), true)
            .override_global(names::FILTER_SPORT, &opts.sport.unwrap_or(0), true)
            .override_global(names::FILTER_DPORT, &opts.dport.unwrap_or(0), true)
            .override_global(names::FILTER_FAMILY, &opts.family.unwrap_or(0), true)
            .override_global(names::OFFSETS, &offsets, true)
            .override_global(names::SOCK_OFFSETS, &sock, true)
            .override_global(names::READ_PLACE, &u8::from(opts.place), true)
            .override_global(names::FILTER_NETNS, &opts.netns.unwrap_or(0), true)
            .override_global(names::FILTER_CGROUP, &cg_id, true)
            .override_global(names::FILTER_CGROUP_LEVEL, &cg_level, true)
            .override_global(layout::RETRANSMIT_HAS_ERR, &u8::from(has_err), true)
            .override_global(layout::SHIFTS, &shifts, true)
            .override_global("AYA_LOG_LEVEL", &level, false)
            .load(OBJECT)
            .map_err(|e| {
                let e = anyhow::Error::new(e);
                refused_by_memlock(&e).map_or_else(
                    || anyhow::anyhow!("loading the eBPF object: {}", one_line(&e)),
                    anyhow::Error::new,
                )
            })?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::debug!("kernel-side logging unavailable: {e}");
                None
            }
        };
        let mut attached = Vec::new();
        let mut btf = None;
        for Planned { tp, .. } in plan {
            // The BTF-typed program where the kernel's BTF told where a socket keeps its fields;
            // the classic tracepoint if that fails.
            if let Some((program, without)) = tp.btf.filter(|_| sock.family != 0) {
                match attach_btf(&mut ebpf, &mut btf, program, tp.name) {
                    Ok(()) => {
                        attached.push(tp.name);
                        continue;
                    }
                    Err(e) => log::warn!("{program}: {e:#}: {without}"),
                }
            }
            let prog: &mut TracePoint = ebpf
                .program_mut(tp.program)
                .with_context(|| format!("program {} missing from the eBPF object", tp.program))?
                .try_into()?;
            // (A refused attach, not a refused load, may be Debian's perf_event_paranoid.)
            let res = prog.load().map_err(|e| (e, false)).and_then(|()| {
                prog.attach(tp.category, tp.name)
                    .map(|_| ())
                    .map_err(|e| (e, true))
            });
            match res {
                Ok(()) => attached.push(tp.name),
                Err((e, attaching)) if tp.loses.is_empty() => {
                    let e = anyhow::Error::new(e);
                    let short = one_line(&e);
                    let why = match attaching {
                        true => refused_by_paranoia(&e),
                        false => refused_by_memlock(&e),
                    };
                    return Err(why.map_or_else(
                        || anyhow::anyhow!("attaching {}/{}: {short}", tp.category, tp.name),
                        anyhow::Error::new,
                    ));
                }
                Err((e, _)) => log::warn!(
                    "could not attach {}/{} ({}): {}",
                    tp.category,
                    tp.name,
                    short_error(&e),
                    tp.loses
                ),
            }
        }
        drop(btf); // before the trim below: aya's parse of the kernel's BTF is large
        for note in notes {
            log::warn!("{note}");
        }
        // Parsing the kernel's BTF (ours for the offsets, aya's for the programs and for the
        // BTF-typed program's attach) leaves freed heap resident; give it back once, now that
        // start-up is over.
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only releases free memory; no allocation is touched.
        unsafe {
            libc::malloc_trim(0);
        }
        let ring = RingBuf::try_from(ebpf.take_map(names::EVENTS).context("EVENTS map")?)?;
        let lost = PerCpuArray::try_from(ebpf.take_map(names::LOST).context("LOST map")?)?;
        let mut tick = tokio::time::interval(opts.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        log::info!(
            "attached {} tracepoints ({}); ring buffer {size} bytes, fd {}",
            attached.len(),
            attached.join(", "),
            ring.as_raw_fd()
        );
        let programs = ebpf
            .programs()
            .filter_map(|(_, p)| p.fd().ok())
            .map(|fd| fd.as_fd().as_raw_fd())
            .collect();
        Ok(Self {
            ring,
            lost,
            lost_reported: 0,
            logger,
            tick,
            delivered: 0,
            undecodable: 0,
            attached,
            programs,
            skipped: (0, None),
            reset_reasons: tracefs::reset_reasons(),
            _ebpf: ebpf,
        })
    }

    /// This kernel's names of its reset reasons (`enum sk_rst_reason`), as its tracepoint
    /// prints them; empty on kernels without them.
    pub fn reset_reasons(&self) -> &ResetReasons {
        &self.reset_reasons
    }

    /// Events lost that have been handed on as [`Delivery::Lost`].
    pub fn lost_reported(&self) -> u64 {
        self.lost_reported
    }

    /// Total events lost so far: those the ring buffer had no room for (the per-CPU
    /// counters) and the programs' runs the kernel skipped (read once a second).
    fn lost_total(&mut self) -> u64 {
        if self
            .skipped
            .1
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            self.skipped = (skipped_runs(&self.programs), Some(Instant::now()));
        }
        let full: u64 = self.lost.get(&0, 0).map_or(0, |v| v.iter().sum());
        (full + self.skipped.0).max(self.lost_reported)
    }

    /// Waits for the poll timer, then appends everything queued to `out` (and a
    /// [`Delivery::Lost`] when the loss counter moved).
    pub async fn fill(&mut self, out: &mut Vec<Delivery>) -> Result<()> {
        self.tick.tick().await;
        self.drain(out);
        Ok(())
    }

    /// The last drain, before the programs detach: the skipped runs read afresh.
    pub fn drain_last(&mut self, out: &mut Vec<Delivery>) {
        self.skipped.1 = None;
        self.drain(out);
    }

    /// Appends whatever is queued now, without waiting.
    pub fn drain(&mut self, out: &mut Vec<Delivery>) {
        while let Some(item) = self.ring.next() {
            match decode(&item) {
                Ok(ev) => {
                    self.delivered += 1;
                    out.push(Delivery::Event(ev));
                }
                Err(e) => {
                    self.undecodable += 1;
                    log::debug!("skipping a record: {e}");
                }
            }
        }
        let lost = self.lost_total();
        if lost > self.lost_reported {
            out.push(Delivery::Lost {
                ts_ns: crate::event::clock::monotonic_ns(),
                count: lost - self.lost_reported,
            });
            self.lost_reported = lost;
        }
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_runs_are_read_from_the_programs_fdinfo() {
        // As this machine's kernel (6.18) prints it for a tracepoint program.
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2069\nprog_type:\t5\n\
                    prog_jited:\t1\nprog_tag:\t3b185187f1855c4c\nmemlock:\t4096\n\
                    prog_id:\t88328\nrun_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t7\n\
                    verified_insns:\t412\n";
        assert_eq!(recursion_misses(info), Some(7));
        assert_eq!(recursion_misses("prog_type:\t5\nrun_cnt:\t0\n"), None);
        // A bad fd is no program: nothing is counted, nothing fails.
        assert_eq!(skipped_runs(&[-1]), 0);
    }
}
