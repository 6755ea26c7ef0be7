//! tcp-trace's kernel programs: one per tracepoint, each small and dumb.
//!
//! Every program copies the tracepoint's fields into one `tcp_trace_common` event, reserves it
//! in the `EVENTS` ring buffer and submits it. Decisions (owners, lifecycles, what is stuck) are
//! all made in userspace. Submits never wake userspace (no per-event wake-up cost); userspace
//! drains on a short timer. A failed reservation is counted in the per-CPU `LOST` array, which
//! userspace reports.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use core::{ffi::c_void, ptr};

    use aya_ebpf::{
        bindings::BPF_RB_NO_WAKEUP,
        helpers::{
            bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel as read_kernel,
            generated::{bpf_get_current_comm, bpf_probe_read_kernel},
        },
        macros::{map, tracepoint},
        maps::{PerCpuArray, RingBuf},
        programs::TracePointContext,
        EbpfContext, Global,
    };
    use aya_log_ebpf::debug;
    use tcp_trace_common::{
        layout::{
            error_report as er, receive_reset as rr, retransmit_skb as rs, retransmit_synack as ra,
            send_reset as sr, set_state as ss, Field,
        },
        tcp_state, ErrorEvent, Header, KernelOffsets, Kind, ResetReceivedEvent, ResetSentEvent,
        RetransmitEvent, StateEvent, SynackRetransmitEvent, AF_INET6, IPPROTO_TCP,
    };

    /// Default 4 MiB; userspace may resize it at load time (`--ringbuf-size`).
    #[map]
    static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

    #[map]
    static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    /// Only this local or remote port (0: all); set at load time from `--port`.
    #[unsafe(no_mangle)]
    static FILTER_PORT: Global<u16> = Global::new(0);

    /// Only this local port (0: all); from `--sport`.
    #[unsafe(no_mangle)]
    static FILTER_SPORT: Global<u16> = Global::new(0);

    /// Only this remote port (0: all); from `--dport`.
    #[unsafe(no_mangle)]
    static FILTER_DPORT: Global<u16> = Global::new(0);

    /// Only this address family (0: all); set at load time from `-4`/`-6`.
    #[unsafe(no_mangle)]
    static FILTER_FAMILY: Global<u16> = Global::new(0);

    /// Where a socket's namespace and cgroup are, from the kernel's BTF (all 0: not read).
    #[unsafe(no_mangle)]
    static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
        sock_net: 0,
        net_inum: 0,
        sock_cgroup: 0,
        cgroup_kn: 0,
        kn_id: 0,
        cgroup_level: 0,
        cgroup_ancestors: 0,
        _pad: 0,
    });

    /// 1: read the namespace and cgroup where `place` is asked to (the output shows them);
    /// 0: only for the `--netns`/`--cgroup` filters.
    #[unsafe(no_mangle)]
    static READ_PLACE: Global<u8> = Global::new(1);

    /// Only sockets in this network namespace (inode; 0: all); from `--netns`.
    #[unsafe(no_mangle)]
    static FILTER_NETNS: Global<u32> = Global::new(0);

    /// Only sockets in this cgroup or below it (id; 0: all); from `--cgroup`.
    #[unsafe(no_mangle)]
    static FILTER_CGROUP: Global<u64> = Global::new(0);

    /// The level of `FILTER_CGROUP` in the cgroup v2 tree (root: 0).
    #[unsafe(no_mangle)]
    static FILTER_CGROUP_LEVEL: Global<u32> = Global::new(0);

    /// Whether an event with these endpoints passes the load-time filters. Checked before
    /// reserving: a filtered-out event costs no ring-buffer space.
    #[inline(always)]
    fn wanted(family: u16, sport: u16, dport: u16) -> bool {
        let port = FILTER_PORT.load();
        let (sp, dp) = (FILTER_SPORT.load(), FILTER_DPORT.load());
        let fam = FILTER_FAMILY.load();
        (port == 0 || sport == port || dport == port)
            && (sp == 0 || sport == sp)
            && (dp == 0 || dport == dp)
            && (fam == 0 || family == fam)
    }

    /// A socket's network namespace inode and cgroup id (0: unknown).
    #[derive(Clone, Copy)]
    struct Place {
        netns: u32,
        cgroup: u64,
    }

    #[inline(always)]
    fn read_u64(addr: u64) -> u64 {
        unsafe { read_kernel(addr as *const u64) }.unwrap_or(0)
    }

    #[inline(always)]
    fn read_u32(addr: u64) -> u32 {
        unsafe { read_kernel(addr as *const u32) }.unwrap_or(0)
    }

    /// The id of cgroup `cg` (`cg->kn->id`).
    #[inline(always)]
    fn cgroup_id(cg: u64, o: &KernelOffsets) -> u64 {
        let kn = read_u64(cg + o.cgroup_kn as u64);
        if kn == 0 {
            return 0;
        }
        read_u64(kn + o.kn_id as u64)
    }

    /// Reads where socket `sk` lives and applies the namespace and cgroup filters (`None`:
    /// filtered out). The reads are dear (on the benchmark's churn, reading them on every
    /// event cost ~120 ns/event more than at births only), so without those filters they are
    /// made only when `needed` (a socket's birth, and the rarer non-state events) and the output
    /// shows them (`READ_PLACE`); userspace gives a socket's other events what its birth said.
    /// An event without a socket passes: userspace filters it by the connection it belongs to.
    #[inline(always)]
    fn place(sk: u64, needed: bool) -> Option<Place> {
        let mut p = Place {
            netns: 0,
            cgroup: 0,
        };
        let want_ns = FILTER_NETNS.load();
        let want_cg = FILTER_CGROUP.load();
        let shown = needed && READ_PLACE.load() != 0;
        if sk == 0 || !(shown || want_ns != 0 || want_cg != 0) {
            return Some(p);
        }
        let o = OFFSETS.load();
        if o.sock_net != 0 {
            let net = read_u64(sk + o.sock_net as u64);
            if net != 0 {
                p.netns = read_u32(net + o.net_inum as u64);
            }
        }
        if want_ns != 0 && p.netns != want_ns {
            return None;
        }
        if o.sock_cgroup != 0 {
            let cg = read_u64(sk + o.sock_cgroup as u64);
            if cg != 0 {
                p.cgroup = cgroup_id(cg, &o);
                if want_cg != 0 && p.cgroup != want_cg {
                    // Below the wanted cgroup: its ancestor at the wanted level is that one.
                    let lvl = FILTER_CGROUP_LEVEL.load();
                    let level = read_u32(cg + o.cgroup_level as u64);
                    if level <= lvl {
                        return None;
                    }
                    let anc = read_u64(cg + o.cgroup_ancestors as u64 + 8 * lvl as u64);
                    if anc == 0 || cgroup_id(anc, &o) != want_cg {
                        return None;
                    }
                }
            }
        }
        if want_cg != 0 && p.cgroup == 0 {
            return None;
        }
        Some(p)
    }

    /// Bit `new` of entry `old`: copy the task's comm for an `old → new` state change. Userspace
    /// fills it from the transitions only a socket's owner makes (everything else may run in
    /// softirq, where the task on the CPU is a bystander and its name is not worth ~60 ns).
    #[unsafe(no_mangle)]
    static COMM_TRANSITIONS: Global<[u32; 16]> = Global::new([0; 16]);

    #[unsafe(no_mangle)]
    static RETRANSMIT_HAS_ERR: Global<u8> = Global::new(1);

    /// Reads a scalar field straight from the tracepoint record. `volatile` keeps LLVM from
    /// merging neighbouring loads into one the verifier would reject as misaligned.
    #[inline(always)]
    fn field<T: Copy>(ctx: &TracePointContext, f: Field) -> T {
        unsafe { ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(f.offset).cast::<T>()) }
    }

    /// Copies a byte-array field. 4-aligned arrays are read straight from the record; others
    /// go through `bpf_probe_read_kernel`, because LLVM folds a loop of narrower loads into
    /// ctx-pointer arithmetic, which the verifier rejects ("modified ctx ptr").
    #[inline(always)]
    fn copy(ctx: &TracePointContext, f: Field, dst: *mut u8) {
        let src = unsafe { ctx.as_ptr().cast::<u8>().add(f.offset) };
        unsafe {
            if f.offset.is_multiple_of(4) && f.size.is_multiple_of(4) {
                for i in 0..f.size / 4 {
                    let v = ptr::read_volatile(src.add(i * 4).cast::<u32>());
                    dst.add(i * 4).cast::<u32>().write(v);
                }
            } else {
                bpf_probe_read_kernel(dst.cast::<c_void>(), f.size as u32, src.cast::<c_void>());
            }
        }
    }

    /// Fills the fields every event has; the task's comm only when `with_comm`.
    #[inline(always)]
    fn header(h: *mut Header, kind: Kind, skaddr: u64, at: Place, with_comm: bool) {
        unsafe {
            (*h).ts_ns = bpf_ktime_get_ns();
            (*h).skaddr = skaddr;
            (*h).netns = at.netns;
            (*h)._pad2 = 0;
            (*h).cgroup = at.cgroup;
            (*h).pid_tgid = bpf_get_current_pid_tgid();
            if with_comm {
                bpf_get_current_comm((*h).comm.as_mut_ptr().cast::<c_void>(), 16);
            } else {
                (*h).comm = [0; 16];
            }
            (*h).kind = kind as u8;
            (*h)._pad = 0;
        }
    }

    /// Whether userspace asked for the comm of this transition.
    #[inline(always)]
    fn wants_comm(old: i32, new: i32) -> bool {
        let table = COMM_TRANSITIONS.load();
        match table.get(old as usize) {
            Some(bits) => (new as u32) < 32 && bits & (1u32 << (new as u32 & 31)) != 0,
            None => false,
        }
    }

    /// Family and ports, read once: the filter checks them, the event carries them.
    #[derive(Clone, Copy)]
    struct Ends {
        family: u16,
        sport: u16,
        dport: u16,
    }

    #[inline(always)]
    fn ends(ctx: &TracePointContext, [family, sport, dport]: [Field; 3]) -> Ends {
        Ends {
            family: field(ctx, family),
            sport: field(ctx, sport),
            dport: field(ctx, dport),
        }
    }

    /// Stores family and ports, and copies the v4 or v6 address pair.
    #[inline(always)]
    fn endpoints(ctx: &TracePointContext, h: *mut Header, e: Ends, f: [Field; 4]) {
        let [saddr, daddr, saddr6, daddr6] = f;
        let fam = e.family;
        unsafe {
            (*h).family = fam;
            (*h).sport = e.sport;
            (*h).dport = e.dport;
            if fam == AF_INET6 {
                copy(ctx, saddr6, (*h).saddr.as_mut_ptr());
                copy(ctx, daddr6, (*h).daddr.as_mut_ptr());
            } else {
                (*h).saddr = [0; 16];
                (*h).daddr = [0; 16];
                copy(ctx, saddr, (*h).saddr.as_mut_ptr());
                copy(ctx, daddr, (*h).daddr.as_mut_ptr());
            }
        }
    }

    /// Reserves room for one `T`, or counts the loss.
    #[inline(always)]
    fn reserve<T: 'static>(
        ctx: &TracePointContext,
    ) -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<T>> {
        let e = EVENTS.reserve::<T>(0);
        if e.is_none() {
            if let Some(n) = LOST.get_ptr_mut(0) {
                unsafe { *n += 1 };
            }
            debug!(ctx, "tcp-trace: ring buffer full, event lost");
        }
        e
    }

    /// Submits without waking userspace, which drains on a short timer instead.
    #[inline(always)]
    fn submit<T>(e: aya_ebpf::maps::ring_buf::RingBufEntry<T>) {
        e.submit(BPF_RB_NO_WAKEUP as u64);
    }

    #[tracepoint(category = "sock", name = "inet_sock_set_state")]
    pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
        let end = ends(&ctx, [ss::FAMILY, ss::SPORT, ss::DPORT]);
        if !wanted(end.family, end.sport, end.dport) {
            return 0;
        }
        if field::<u16>(&ctx, ss::PROTOCOL) != IPPROTO_TCP {
            return 0;
        }
        let sk: u64 = field(&ctx, ss::SKADDR);
        let old: i32 = field(&ctx, ss::OLDSTATE);
        let new: i32 = field(&ctx, ss::NEWSTATE);
        // Born: CLOSE → SYN_SENT/LISTEN (connect, listen) or LISTEN → SYN_RECV (a child).
        let born =
            old == tcp_state::CLOSE || (old == tcp_state::LISTEN && new == tcp_state::SYN_RECV);
        let Some(at) = place(sk, born) else {
            return 0;
        };
        let Some(mut e) = reserve::<StateEvent>(&ctx) else {
            return 0;
        };
        let p = e.as_mut_ptr();
        unsafe {
            header(&raw mut (*p).hdr, Kind::State, sk, at, wants_comm(old, new));
            endpoints(
                &ctx,
                &raw mut (*p).hdr,
                end,
                [ss::SADDR, ss::DADDR, ss::SADDR_V6, ss::DADDR_V6],
            );
            (*p).oldstate = old;
            (*p).newstate = new;
        }
        submit(e);
        0
    }

    #[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
    pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
        let end = ends(&ctx, [rs::FAMILY, rs::SPORT, rs::DPORT]);
        if !wanted(end.family, end.sport, end.dport) {
            return 0;
        }
        let sk: u64 = field(&ctx, rs::SKADDR);
        let Some(at) = place(sk, true) else {
            return 0;
        };
        let Some(mut e) = reserve::<RetransmitEvent>(&ctx) else {
            return 0;
        };
        let p = e.as_mut_ptr();
        unsafe {
            header(&raw mut (*p).hdr, Kind::Retransmit, sk, at, false);
            endpoints(
                &ctx,
                &raw mut (*p).hdr,
                end,
                [rs::SADDR, rs::DADDR, rs::SADDR_V6, rs::DADDR_V6],
            );
            (*p).state = field(&ctx, rs::STATE);
            (*p).err = if RETRANSMIT_HAS_ERR.load() != 0 {
                field(&ctx, rs::ERR)
            } else {
                0
            };
        }
        submit(e);
        0
    }

    #[tracepoint(category = "tcp", name = "tcp_retransmit_synack")]
    pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
        let end = ends(&ctx, [ra::FAMILY, ra::SPORT, ra::DPORT]);
        if !wanted(end.family, end.sport, end.dport) {
            return 0;
        }
        let sk: u64 = field(&ctx, ra::SKADDR);
        let Some(at) = place(sk, true) else {
            return 0;
        };
        let Some(mut e) = reserve::<SynackRetransmitEvent>(&ctx) else {
            return 0;
        };
        let p = e.as_mut_ptr();
        unsafe {
            header(&raw mut (*p).hdr, Kind::SynackRetransmit, sk, at, false);
            endpoints(
                &ctx,
                &raw mut (*p).hdr,
                end,
                [ra::SADDR, ra::DADDR, ra::SADDR_V6, ra::DADDR_V6],
            );
            (*p).req = field(&ctx, ra::REQ);
        }
        submit(e);
        0
    }

    #[tracepoint(category = "tcp", name = "tcp_send_reset")]
    pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
        // The endpoints are sockaddr images: family (host order) at 0, port (network order)
        // at 2 of each.
        let fam: u16 = field(&ctx, sr::SADDR);
        let sport = u16::from_be(field(
            &ctx,
            Field {
                offset: sr::SADDR.offset + 2,
                ..sr::SADDR
            },
        ));
        let dport = u16::from_be(field(
            &ctx,
            Field {
                offset: sr::DADDR.offset + 2,
                ..sr::DADDR
            },
        ));
        if !wanted(fam, sport, dport) {
            return 0;
        }
        let sk: u64 = field(&ctx, sr::SKADDR);
        let Some(at) = place(sk, true) else {
            return 0;
        };
        let Some(mut e) = reserve::<ResetSentEvent>(&ctx) else {
            return 0;
        };
        let p = e.as_mut_ptr();
        unsafe {
            header(&raw mut (*p).hdr, Kind::ResetSent, sk, at, false);
            (*p).hdr.family = 0;
            (*p).hdr.sport = 0;
            (*p).hdr.dport = 0;
            (*p).hdr.saddr = [0; 16];
            (*p).hdr.daddr = [0; 16];
            (*p).state = field(&ctx, sr::STATE);
            (*p).reason = field(&ctx, sr::REASON);
            copy(&ctx, sr::SADDR, (*p).saddr_raw.as_mut_ptr());
            copy(&ctx, sr::DADDR, (*p).daddr_raw.as_mut_ptr());
        }
        submit(e);
        0
    }

    #[tracepoint(category = "tcp", name = "tcp_receive_reset")]
    pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
        let end = ends(&ctx, [rr::FAMILY, rr::SPORT, rr::DPORT]);
        if !wanted(end.family, end.sport, end.dport) {
            return 0;
        }
        let sk: u64 = field(&ctx, rr::SKADDR);
        let Some(at) = place(sk, true) else {
            return 0;
        };
        let Some(mut e) = reserve::<ResetReceivedEvent>(&ctx) else {
            return 0;
        };
        let p = e.as_mut_ptr();
        unsafe {
            header(&raw mut (*p).hdr, Kind::ResetReceived, sk, at, false);
            endpoints(
                &ctx,
                &raw mut (*p).hdr,
                end,
                [rr::SADDR, rr::DADDR, rr::SADDR_V6, rr::DADDR_V6],
            );
            (*p).cookie = field(&ctx, rr::COOKIE);
        }
        submit(e);
        0
    }

    #[tracepoint(category = "sock", name = "inet_sk_error_report")]
    pub fn inet_sk_error_report(ctx: TracePointContext) -> u32 {
        let end = ends(&ctx, [er::FAMILY, er::SPORT, er::DPORT]);
        if !wanted(end.family, end.sport, end.dport) {
            return 0;
        }
        if field::<u16>(&ctx, er::PROTOCOL) != IPPROTO_TCP {
            return 0;
        }
        let Some(mut e) = reserve::<ErrorEvent>(&ctx) else {
            return 0;
        };
        let p = e.as_mut_ptr();
        unsafe {
            // This tracepoint has no socket pointer: no namespace or cgroup either.
            let none = Place {
                netns: 0,
                cgroup: 0,
            };
            header(&raw mut (*p).hdr, Kind::Error, 0, none, false);
            endpoints(
                &ctx,
                &raw mut (*p).hdr,
                end,
                [er::SADDR, er::DADDR, er::SADDR_V6, er::DADDR_V6],
            );
            (*p).error = field(&ctx, er::ERROR);
            (*p)._pad = 0;
        }
        submit(e);
        0
    }

    /// GPL-compatible, so the kernel lets the programs use every helper they need.
    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

/// On the host this crate builds to nothing; the programs exist only for the BPF target.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
