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
            generated::bpf_get_current_comm,
        },
        macros::{btf_tracepoint, map, tracepoint},
        maps::{PerCpuArray, RingBuf},
        programs::{BtfTracePointContext, TracePointContext},
        EbpfContext, Global,
    };
    use aya_log_ebpf::debug;
    use tcp_trace_common::{
        in_owner_context, is_birth,
        layout::{
            error_report as er, receive_reset as rr, receive_reset_v0 as rr0, retransmit_skb as rs,
            retransmit_skb_v0 as rs0, retransmit_synack as ra, retransmit_synack_v0 as ra0,
            send_reset as sr, send_reset_v0 as sr0, send_reset_v1 as sr1, set_state as ss, Field,
            Window, MAX_SHIFT, NO_REASON,
        },
        tcp_state, Body, ErrorEvent, Header, KernelOffsets, ResetReceivedEvent, ResetSentEvent,
        RetransmitEvent, SockOffsets, StateEvent, SynackRetransmitEvent, AF_INET, AF_INET6,
        ENDING_READ, IPPROTO_TCP, SHUTDOWN_MASK, TIMER_GAVE_UP, USER_TIMEOUT_READ,
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
        ancestor_ids: 0,
        skb_head: 0,
        skb_network_header: 0,
        skb_transport_header: 0,
    });

    /// Where a socket keeps its endpoints, error and protocol, from the kernel's BTF.
    #[unsafe(no_mangle)]
    static SOCK_OFFSETS: Global<SockOffsets> = Global::new(SockOffsets {
        family: 0,
        sport: 0,
        dport: 0,
        rcv_saddr: 0,
        daddr: 0,
        v6_rcv_saddr: 0,
        v6_daddr: 0,
        protocol: 0,
        err: 0,
        user_timeout: 0,
        err_soft: 0,
        shutdown: 0,
        icsk_pending: 0,
        icsk_retransmits: 0,
        icsk_probes_out: 0,
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

    /// Whether a socket error report says something. The kernel wakes the socket's waiters
    /// before the tracepoint runs, so an application reading the error at once (`SO_ERROR`, a
    /// failing call) can leave it 0 here: sent as error 0, "read first", while the socket has
    /// its remote port. Error 0 without one says nothing: after a failed connect, connect()
    /// disconnects the socket (tcp_disconnect), which wakes waiters through the same hook
    /// with the error consumed and the remote port cleared.
    #[inline(always)]
    fn reported(error: i32, dport: u16) -> bool {
        error != 0 || dport != 0
    }

    /// `wanted`, for a socket error: one reported after a disconnect has cleared a port passes
    /// (errors are rare), and userspace filters it on the ports of the connection it joins.
    #[inline(always)]
    fn wanted_or_cleared(e: &Ends) -> bool {
        e.sport == 0 || e.dport == 0 || wanted(e.family, e.sport, e.dport)
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

    /// Endpoints read outside a tracepoint record (from a packet, or from a socket): ours
    /// first.
    #[derive(Clone, Copy)]
    struct Endpoints {
        ends: Ends,
        ours: [u8; 16],
        theirs: [u8; 16],
    }

    /// The endpoints of the reply to packet `skb`, from its IP and TCP headers (our side is the
    /// packet's destination). A listener answering a segment for a connection it does not have
    /// sends a reset whose tracepoint names the listener (remote `0.0.0.0:0`); the packet names
    /// the peer the reset goes to.
    #[inline(always)]
    fn reply_to(skb: u64) -> Option<Endpoints> {
        let o = OFFSETS.load();
        if skb == 0 || o.skb_head == 0 {
            return None;
        }
        let head = read_u64(skb + o.skb_head as u64);
        let nh: u16 =
            unsafe { read_kernel((skb + o.skb_network_header as u64) as *const u16) }.ok()?;
        let th: u16 =
            unsafe { read_kernel((skb + o.skb_transport_header as u64) as *const u16) }.ok()?;
        if head == 0 || nh == u16::MAX || th == u16::MAX {
            return None; // headers not set
        }
        let ip = head + nh as u64;
        let ports: [u16; 2] = unsafe { read_kernel((head + th as u64) as *const [u16; 2]) }.ok()?;
        let version = unsafe { read_kernel(ip as *const u8) }.ok()? >> 4;
        let mut r = Endpoints {
            ends: Ends {
                family: AF_INET,
                sport: u16::from_be(ports[1]),
                dport: u16::from_be(ports[0]),
            },
            ours: [0; 16],
            theirs: [0; 16],
        };
        if version == 4 {
            let a: [u8; 8] = unsafe { read_kernel((ip + 12) as *const [u8; 8]) }.ok()?;
            r.theirs[..4].copy_from_slice(&a[..4]);
            r.ours[..4].copy_from_slice(&a[4..]);
        } else if version == 6 {
            r.ends.family = AF_INET6;
            r.theirs = unsafe { read_kernel((ip + 8) as *const [u8; 16]) }.ok()?;
            r.ours = unsafe { read_kernel((ip + 24) as *const [u8; 16]) }.ok()?;
        } else {
            return None;
        }
        Some(r)
    }

    /// Reads where socket `sk` lives and applies the namespace and cgroup filters (`None`:
    /// filtered out). The reads are dear (chains of dependent loads through the socket, its
    /// namespace and its cgroup), so without those filters they are
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
            // (Low bits set: data of cgroup v1's net_cls/net_prio in 5.10's union, no cgroup.)
            if cg != 0 && cg & 3 == 0 {
                p.cgroup = cgroup_id(cg, &o);
                if want_cg != 0 && p.cgroup != want_cg {
                    // Below the wanted cgroup: its ancestor at the wanted level is that one.
                    let lvl = FILTER_CGROUP_LEVEL.load();
                    let level = read_u32(cg + o.cgroup_level as u64);
                    if level <= lvl {
                        return None;
                    }
                    let anc = read_u64(cg + o.cgroup_ancestors as u64 + 8 * lvl as u64);
                    let id = match (anc, o.ancestor_ids) {
                        (0, _) => 0,
                        (id, 1) => id,
                        (ptr, _) => cgroup_id(ptr, &o),
                    };
                    if id != want_cg {
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

    #[unsafe(no_mangle)]
    static RETRANSMIT_HAS_ERR: Global<u8> = Global::new(1);

    /// Byte `slot`: how much later than compiled this kernel puts that program's record
    /// fields (userspace measures it from the `format` file; 8 on PREEMPT_RT kernels).
    #[unsafe(no_mangle)]
    static SHIFTS: Global<u64> = Global::new(0);

    /// A program's window of its tracepoint record, copied with one read. Fields are read from
    /// the copy at constant offsets: the verifier allows ctx reads only at constant offsets,
    /// and the record's offsets are known only at load time.
    struct Rec<const W: usize> {
        buf: [u64; W],
        start: usize,
    }

    #[inline(always)]
    fn record<const W: usize>(ctx: &TracePointContext, slot: usize, win: Window) -> Option<Rec<W>> {
        let shift = (SHIFTS.load() >> (8 * slot)) & MAX_SHIFT as u64;
        let src = ctx.as_ptr() as u64 + win.start as u64 + shift;
        let buf = unsafe { read_kernel(src as *const [u64; W]) }.ok()?;
        Some(Rec {
            buf,
            start: win.start,
        })
    }

    impl<const W: usize> Rec<W> {
        /// A scalar field (naturally aligned in the record, so in the 8-aligned copy too).
        #[inline(always)]
        fn get<T: Copy>(&self, f: Field) -> T {
            unsafe { ptr::read(self.at(f).cast::<T>()) }
        }

        /// Copies a byte-array field.
        #[inline(always)]
        fn copy(&self, f: Field, dst: *mut u8) {
            unsafe { ptr::copy_nonoverlapping(self.at(f), dst, f.size) }
        }

        #[inline(always)]
        fn at(&self, f: Field) -> *const u8 {
            unsafe { self.buf.as_ptr().cast::<u8>().add(f.offset - self.start) }
        }
    }

    /// Fills the fields every event has; the task's ids and comm only when `with_task` (the
    /// engine takes an owner only from those events: elsewhere the task is a bystander).
    #[inline(always)]
    fn header(h: *mut Header, kind: Body, skaddr: u64, at: Place, with_task: bool) {
        unsafe {
            (*h).ts_ns = bpf_ktime_get_ns();
            (*h).skaddr = skaddr;
            (*h).netns = at.netns;
            (*h)._pad2 = 0;
            (*h).cgroup = at.cgroup;
            if with_task {
                (*h).pid_tgid = bpf_get_current_pid_tgid();
                bpf_get_current_comm((*h).comm.as_mut_ptr().cast::<c_void>(), 16);
            } else {
                (*h).pid_tgid = 0;
                (*h).comm = [0; 16];
            }
            (*h).kind = kind as u8;
            (*h)._pad = 0;
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
    fn ends<const W: usize>(r: &Rec<W>, [family, sport, dport]: [Field; 3]) -> Ends {
        Ends {
            family: r.get(family),
            sport: r.get(sport),
            dport: r.get(dport),
        }
    }

    /// Stores family and ports, and copies the v4 or v6 address pair.
    #[inline(always)]
    fn endpoints<const W: usize>(r: &Rec<W>, h: *mut Header, e: Ends, f: [Field; 4]) {
        let [saddr, daddr, saddr6, daddr6] = f;
        unsafe {
            (*h).family = e.family;
            (*h).sport = e.sport;
            (*h).dport = e.dport;
            if e.family == AF_INET6 {
                r.copy(saddr6, (*h).saddr.as_mut_ptr());
                r.copy(daddr6, (*h).daddr.as_mut_ptr());
            } else {
                (*h).saddr = [0; 16];
                (*h).daddr = [0; 16];
                r.copy(saddr, (*h).saddr.as_mut_ptr());
                r.copy(daddr, (*h).daddr.as_mut_ptr());
            }
        }
    }

    /// Reserves room for one `T`, or counts the loss.
    #[inline(always)]
    fn reserve<T: 'static, C: EbpfContext>(
        ctx: &C,
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
        let Some(r) = record::<{ ss::WINDOW.words }>(&ctx, ss::SLOT, ss::WINDOW) else {
            return 0;
        };
        let end = ends(&r, [ss::FAMILY, ss::SPORT, ss::DPORT]);
        if !wanted(end.family, end.sport, end.dport) || r.get::<u16>(ss::PROTOCOL) != IPPROTO_TCP {
            return 0;
        }
        let sk: u64 = r.get(ss::SKADDR);
        let old: i32 = r.get(ss::OLDSTATE);
        let new: i32 = r.get(ss::NEWSTATE);
        let Some(at) = place(sk, is_birth(old, new)) else {
            return 0;
        };
        let Some(mut e) = reserve::<StateEvent, _>(&ctx) else {
            return 0;
        };
        let p = e.as_mut_ptr();
        unsafe {
            header(
                &raw mut (*p).hdr,
                Body::State,
                sk,
                at,
                in_owner_context(old, new),
            );
            let addrs = [ss::SADDR, ss::DADDR, ss::SADDR_V6, ss::DADDR_V6];
            endpoints(&r, &raw mut (*p).hdr, end, addrs);
            (*p).oldstate = old;
            (*p).newstate = new;
            (*p).error = 0;
            (*p).soft_error = 0;
            (*p).shutdown = 0;
            (*p).ending = 0;
            if new == tcp_state::CLOSE {
                ending(sk, p);
            }
        }
        submit(e);
        0
    }

    /// What a socket going to CLOSE holds of why: its error, read here before the wake-up that
    /// lets its application consume it (the error report's tracepoint runs after that wake-up,
    /// and does not exist on older kernels), and what tells who ended it when the error is
    /// gone already (older kernels wake the application before they close a timed-out socket).
    #[inline(always)]
    fn ending(sk: u64, p: *mut StateEvent) {
        let o = SOCK_OFFSETS.load();
        if o.err_soft == 0 || sk == 0 {
            return;
        }
        let read_i32 = |off: u32| unsafe { read_kernel((sk + off as u64) as *const i32) };
        let read_u8 = |off: u32| unsafe { read_kernel((sk + off as u64) as *const u8) };
        let (Ok(err), Ok(soft), Ok(shut)) =
            (read_i32(o.err), read_i32(o.err_soft), read_u8(o.shutdown))
        else {
            return;
        };
        // Whose timer ended it matters only when the error is gone and its application did not
        // close it (most closes are its application's: three reads, not six).
        let gave_up = err == 0
            && shut != SHUTDOWN_MASK
            && o.icsk_pending != 0
            && read_u8(o.icsk_pending) == Ok(0)
            && (read_u8(o.icsk_retransmits).unwrap_or(0) != 0
                || read_u8(o.icsk_probes_out).unwrap_or(0) != 0);
        unsafe {
            (*p).error = err;
            (*p).soft_error = soft as u16;
            (*p).shutdown = shut;
            (*p).ending = ENDING_READ | if gave_up { TIMER_GAVE_UP } else { 0 };
        }
    }

    /// Where a record keeps the endpoints: family (`None`: a record without one), ports, then
    /// the v4 and v6 address pairs.
    #[derive(Clone, Copy)]
    struct EndFields {
        family: Option<Field>,
        sport: Field,
        dport: Field,
        addrs: [Field; 4],
    }

    /// The family of a record that has none (Linux 5.10's `tcp` tracepoints): the socket's,
    /// as newer records give it (a dual-stack socket is AF_INET6 with v4-mapped addresses);
    /// without the socket, what its IPv6 address shows (v4-mapped for an IPv4 socket).
    #[inline(always)]
    fn family_of<const W: usize>(r: &Rec<W>, sk: u64, saddr_v6: Field) -> u16 {
        let off = SOCK_OFFSETS.load().family;
        if sk != 0 && off != 0 {
            if let Ok(f) = unsafe { read_kernel((sk + off as u64) as *const u16) } {
                return f;
            }
        }
        let a: [u8; 16] = r.get(saddr_v6);
        let mapped = a[..10].iter().all(|&b| b == 0) && a[10] == 0xff && a[11] == 0xff;
        if mapped || a == [0; 16] {
            AF_INET
        } else {
            AF_INET6
        }
    }

    #[inline(always)]
    fn read_ends<const W: usize>(r: &Rec<W>, sk: u64, f: &EndFields) -> Ends {
        Ends {
            family: match f.family {
                Some(fam) => r.get(fam),
                None => family_of(r, sk, f.addrs[2]),
            },
            sport: r.get(f.sport),
            dport: r.get(f.dport),
        }
    }

    /// Whether TCP_USER_TIMEOUT, not tcp_retries2, decides when the kernel gives up.
    #[inline(always)]
    fn user_timeout(sk: u64, p: *mut RetransmitEvent) {
        let off = SOCK_OFFSETS.load().user_timeout;
        let uto = match off {
            0 => None,
            _ => unsafe { read_kernel((sk + u64::from(off)) as *const u32) }.ok(),
        };
        unsafe {
            (*p).user_timeout_ms = uto.unwrap_or(0);
            (*p).flags = if uto.is_some() { USER_TIMEOUT_READ } else { 0 };
        }
    }

    /// Both layouts of `tcp_retransmit_skb`: `err` where the record has it.
    #[inline(always)]
    fn retransmit<const W: usize>(
        ctx: &TracePointContext,
        r: &Rec<W>,
        [skaddr, state]: [Field; 2],
        f: EndFields,
        err: Option<Field>,
    ) -> u32 {
        let sk: u64 = r.get(skaddr);
        let end = read_ends(r, sk, &f);
        if !wanted(end.family, end.sport, end.dport) {
            return 0;
        }
        let Some(at) = place(sk, true) else {
            return 0;
        };
        let Some(mut e) = reserve::<RetransmitEvent, _>(ctx) else {
            return 0;
        };
        let p = e.as_mut_ptr();
        unsafe {
            header(&raw mut (*p).hdr, Body::Retransmit, sk, at, false);
            endpoints(r, &raw mut (*p).hdr, end, f.addrs);
            (*p).state = r.get(state);
            (*p).err = match err {
                Some(f) if RETRANSMIT_HAS_ERR.load() != 0 => r.get(f),
                _ => 0,
            };
            user_timeout(sk, p);
        }
        submit(e);
        0
    }

    #[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
    pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
        let Some(r) = record::<{ rs::WINDOW.words }>(&ctx, rs::SLOT, rs::WINDOW) else {
            return 0;
        };
        let f = EndFields {
            family: Some(rs::FAMILY),
            sport: rs::SPORT,
            dport: rs::DPORT,
            addrs: [rs::SADDR, rs::DADDR, rs::SADDR_V6, rs::DADDR_V6],
        };
        retransmit(&ctx, &r, [rs::SKADDR, rs::STATE], f, Some(rs::ERR))
    }

    /// The record without `family` or `err` (Linux 5.10).
    #[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
    pub fn tcp_retransmit_skb_v0(ctx: TracePointContext) -> u32 {
        let Some(r) = record::<{ rs0::WINDOW.words }>(&ctx, rs0::SLOT, rs0::WINDOW) else {
            return 0;
        };
        let f = EndFields {
            family: None,
            sport: rs0::SPORT,
            dport: rs0::DPORT,
            addrs: [rs0::SADDR, rs0::DADDR, rs0::SADDR_V6, rs0::DADDR_V6],
        };
        retransmit(&ctx, &r, [rs0::SKADDR, rs0::STATE], f, None)
    }

    /// Both layouts of `tcp_retransmit_synack`.
    #[inline(always)]
    fn synack<const W: usize>(
        ctx: &TracePointContext,
        r: &Rec<W>,
        [skaddr, req]: [Field; 2],
        f: EndFields,
    ) -> u32 {
        let sk: u64 = r.get(skaddr);
        let end = read_ends(r, sk, &f);
        if !wanted(end.family, end.sport, end.dport) {
            return 0;
        }
        let Some(at) = place(sk, true) else {
            return 0;
        };
        let Some(mut e) = reserve::<SynackRetransmitEvent, _>(ctx) else {
            return 0;
        };
        let p = e.as_mut_ptr();
        unsafe {
            header(&raw mut (*p).hdr, Body::SynackRetransmit, sk, at, false);
            endpoints(r, &raw mut (*p).hdr, end, f.addrs);
            (*p).req = r.get(req);
        }
        submit(e);
        0
    }

    #[tracepoint(category = "tcp", name = "tcp_retransmit_synack")]
    pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
        let Some(r) = record::<{ ra::WINDOW.words }>(&ctx, ra::SLOT, ra::WINDOW) else {
            return 0;
        };
        let f = EndFields {
            family: Some(ra::FAMILY),
            sport: ra::SPORT,
            dport: ra::DPORT,
            addrs: [ra::SADDR, ra::DADDR, ra::SADDR_V6, ra::DADDR_V6],
        };
        synack(&ctx, &r, [ra::SKADDR, ra::REQ], f)
    }

    /// The record without `family` (Linux 5.10).
    #[tracepoint(category = "tcp", name = "tcp_retransmit_synack")]
    pub fn tcp_retransmit_synack_v0(ctx: TracePointContext) -> u32 {
        let Some(r) = record::<{ ra0::WINDOW.words }>(&ctx, ra0::SLOT, ra0::WINDOW) else {
            return 0;
        };
        let f = EndFields {
            family: None,
            sport: ra0::SPORT,
            dport: ra0::DPORT,
            addrs: [ra0::SADDR, ra0::DADDR, ra0::SADDR_V6, ra0::DADDR_V6],
        };
        synack(&ctx, &r, [ra0::SKADDR, ra0::REQ], f)
    }

    /// A listener's reset goes to the sender of the packet it answers (see [`reply_to`]).
    #[inline(always)]
    fn listener_reply(sk: u64, state: i32, skb: u64) -> Option<Endpoints> {
        if sk != 0 && state == tcp_state::LISTEN {
            reply_to(skb)
        } else {
            None
        }
    }

    /// Fills the header's endpoints from [`reply_to`]'s or [`tcp_sock`]'s.
    #[inline(always)]
    fn set_endpoints(h: *mut Header, r: &Endpoints) {
        unsafe {
            (*h).family = r.ends.family;
            (*h).sport = r.ends.sport;
            (*h).dport = r.ends.dport;
            (*h).saddr = r.ours;
            (*h).daddr = r.theirs;
        }
    }

    /// The layout with `sockaddr` images and a reset reason.
    #[tracepoint(category = "tcp", name = "tcp_send_reset")]
    pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
        let Some(r) = record::<{ sr::WINDOW.words }>(&ctx, sr::SLOT, sr::WINDOW) else {
            return 0;
        };
        let sk: u64 = r.get(sr::SKADDR);
        let state: i32 = r.get(sr::STATE);
        let reply = listener_reply(sk, state, r.get(sr::SKBADDR));
        // Each image: family (host order) at 0, port (network order) at 2.
        let port = |f: Field| {
            u16::from_be(r.get(Field {
                offset: f.offset + 2,
                ..f
            }))
        };
        let end = match reply {
            Some(p) => p.ends,
            None => Ends {
                family: r.get(sr::SADDR),
                sport: port(sr::SADDR),
                dport: port(sr::DADDR),
            },
        };
        if !wanted(end.family, end.sport, end.dport) {
            return 0;
        }
        let Some(at) = place(sk, true) else {
            return 0;
        };
        let Some(mut e) = reserve::<ResetSentEvent, _>(&ctx) else {
            return 0;
        };
        let p = e.as_mut_ptr();
        unsafe {
            header(&raw mut (*p).hdr, Body::ResetSent, sk, at, false);
            (*p).state = state;
            (*p).reason = r.get(sr::REASON);
            match reply {
                // Header endpoints, images zero: userspace keeps the header's.
                Some(reply) => {
                    set_endpoints(&raw mut (*p).hdr, &reply);
                    (*p).saddr_raw = [0; 28];
                    (*p).daddr_raw = [0; 28];
                }
                // Userspace fills the header's endpoints from the images.
                None => {
                    (*p).hdr.family = 0;
                    (*p).hdr.sport = 0;
                    (*p).hdr.dport = 0;
                    (*p).hdr.saddr = [0; 16];
                    (*p).hdr.daddr = [0; 16];
                    r.copy(sr::SADDR, (*p).saddr_raw.as_mut_ptr());
                    r.copy(sr::DADDR, (*p).daddr_raw.as_mut_ptr());
                }
            }
        }
        submit(e);
        0
    }

    /// The layouts with plain endpoints and no reason (Linux 6.1; 5.10 without `family`): the
    /// header carries the endpoints and the images stay zero, which tells userspace so.
    #[inline(always)]
    fn reset_sent_plain<const W: usize>(
        ctx: &TracePointContext,
        r: &Rec<W>,
        [skbaddr, skaddr, state]: [Field; 3],
        f: EndFields,
    ) -> u32 {
        let sk: u64 = r.get(skaddr);
        let state: i32 = r.get(state);
        let reply = listener_reply(sk, state, r.get(skbaddr));
        let end = match reply {
            Some(p) => p.ends,
            None => read_ends(r, sk, &f),
        };
        if !wanted(end.family, end.sport, end.dport) {
            return 0;
        }
        let Some(at) = place(sk, true) else {
            return 0;
        };
        let Some(mut e) = reserve::<ResetSentEvent, _>(ctx) else {
            return 0;
        };
        let p = e.as_mut_ptr();
        unsafe {
            header(&raw mut (*p).hdr, Body::ResetSent, sk, at, false);
            match reply {
                Some(reply) => set_endpoints(&raw mut (*p).hdr, &reply),
                None => endpoints(r, &raw mut (*p).hdr, end, f.addrs),
            }
            (*p).state = state;
            (*p).reason = NO_REASON;
            (*p).saddr_raw = [0; 28];
            (*p).daddr_raw = [0; 28];
        }
        submit(e);
        0
    }

    #[tracepoint(category = "tcp", name = "tcp_send_reset")]
    pub fn tcp_send_reset_v1(ctx: TracePointContext) -> u32 {
        let Some(r) = record::<{ sr1::WINDOW.words }>(&ctx, sr1::SLOT, sr1::WINDOW) else {
            return 0;
        };
        let f = EndFields {
            family: Some(sr1::FAMILY),
            sport: sr1::SPORT,
            dport: sr1::DPORT,
            addrs: [sr1::SADDR, sr1::DADDR, sr1::SADDR_V6, sr1::DADDR_V6],
        };
        reset_sent_plain(&ctx, &r, [sr1::SKBADDR, sr1::SKADDR, sr1::STATE], f)
    }

    #[tracepoint(category = "tcp", name = "tcp_send_reset")]
    pub fn tcp_send_reset_v0(ctx: TracePointContext) -> u32 {
        let Some(r) = record::<{ sr0::WINDOW.words }>(&ctx, sr0::SLOT, sr0::WINDOW) else {
            return 0;
        };
        let f = EndFields {
            family: None,
            sport: sr0::SPORT,
            dport: sr0::DPORT,
            addrs: [sr0::SADDR, sr0::DADDR, sr0::SADDR_V6, sr0::DADDR_V6],
        };
        reset_sent_plain(&ctx, &r, [sr0::SKBADDR, sr0::SKADDR, sr0::STATE], f)
    }

    /// Both layouts of `tcp_receive_reset`.
    #[inline(always)]
    fn reset_received<const W: usize>(
        ctx: &TracePointContext,
        r: &Rec<W>,
        [skaddr, cookie]: [Field; 2],
        f: EndFields,
    ) -> u32 {
        let sk: u64 = r.get(skaddr);
        let end = read_ends(r, sk, &f);
        if !wanted(end.family, end.sport, end.dport) {
            return 0;
        }
        let Some(at) = place(sk, true) else {
            return 0;
        };
        let Some(mut e) = reserve::<ResetReceivedEvent, _>(ctx) else {
            return 0;
        };
        let p = e.as_mut_ptr();
        unsafe {
            header(&raw mut (*p).hdr, Body::ResetReceived, sk, at, false);
            endpoints(r, &raw mut (*p).hdr, end, f.addrs);
            (*p).cookie = r.get(cookie);
        }
        submit(e);
        0
    }

    #[tracepoint(category = "tcp", name = "tcp_receive_reset")]
    pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
        let Some(r) = record::<{ rr::WINDOW.words }>(&ctx, rr::SLOT, rr::WINDOW) else {
            return 0;
        };
        let f = EndFields {
            family: Some(rr::FAMILY),
            sport: rr::SPORT,
            dport: rr::DPORT,
            addrs: [rr::SADDR, rr::DADDR, rr::SADDR_V6, rr::DADDR_V6],
        };
        reset_received(&ctx, &r, [rr::SKADDR, rr::COOKIE], f)
    }

    #[tracepoint(category = "tcp", name = "tcp_receive_reset")]
    pub fn tcp_receive_reset_v0(ctx: TracePointContext) -> u32 {
        let Some(r) = record::<{ rr0::WINDOW.words }>(&ctx, rr0::SLOT, rr0::WINDOW) else {
            return 0;
        };
        let f = EndFields {
            family: None,
            sport: rr0::SPORT,
            dport: rr0::DPORT,
            addrs: [rr0::SADDR, rr0::DADDR, rr0::SADDR_V6, rr0::DADDR_V6],
        };
        reset_received(&ctx, &r, [rr0::SKADDR, rr0::COOKIE], f)
    }

    #[tracepoint(category = "sock", name = "inet_sk_error_report")]
    pub fn inet_sk_error_report(ctx: TracePointContext) -> u32 {
        let Some(r) = record::<{ er::WINDOW.words }>(&ctx, er::SLOT, er::WINDOW) else {
            return 0;
        };
        let end = ends(&r, [er::FAMILY, er::SPORT, er::DPORT]);
        if !wanted_or_cleared(&end) || r.get::<u16>(er::PROTOCOL) != IPPROTO_TCP {
            return 0;
        }
        let error: i32 = r.get(er::ERROR);
        if !reported(error, end.dport) {
            return 0;
        }
        let Some(mut e) = reserve::<ErrorEvent, _>(&ctx) else {
            return 0;
        };
        let p = e.as_mut_ptr();
        unsafe {
            // This tracepoint has no socket pointer: no namespace or cgroup either.
            let none = Place {
                netns: 0,
                cgroup: 0,
            };
            header(&raw mut (*p).hdr, Body::Error, 0, none, false);
            let addrs = [er::SADDR, er::DADDR, er::SADDR_V6, er::DADDR_V6];
            endpoints(&r, &raw mut (*p).hdr, end, addrs);
            (*p).error = error;
            (*p)._pad = 0;
        }
        submit(e);
        0
    }

    /// A field of the socket a BTF-typed tracepoint hands over, loaded directly (no helper
    /// call): the verifier knows the pointer's type, and the offsets, read-only globals, are
    /// constants to it. A load that faults reads 0.
    #[inline(always)]
    fn field<T: Copy>(sk: u64, off: u32) -> T {
        unsafe { ptr::read((sk + off as u64) as *const T) }
    }

    /// Reads `sk`'s endpoints if it is a TCP socket. The local port the classic tracepoints
    /// report (`inet_sport`, which outlives the port's release at a close) lies past `struct
    /// sock`, where a direct load is refused: it takes a helper call.
    #[inline(always)]
    fn tcp_sock(sk: u64, o: &SockOffsets) -> Option<Endpoints> {
        if sk == 0 || field::<u16>(sk, o.protocol) != IPPROTO_TCP {
            return None;
        }
        let sport = unsafe { read_kernel((sk + o.sport as u64) as *const u16) }.unwrap_or(0);
        let mut s = Endpoints {
            ends: Ends {
                family: field(sk, o.family),
                sport: u16::from_be(sport),
                dport: u16::from_be(field(sk, o.dport)),
            },
            ours: [0; 16],
            theirs: [0; 16],
        };
        if s.ends.family == AF_INET6 && o.v6_daddr != 0 {
            s.ours = field(sk, o.v6_rcv_saddr);
            s.theirs = field(sk, o.v6_daddr);
        } else {
            s.ours[..4].copy_from_slice(&field::<[u8; 4]>(sk, o.rcv_saddr));
            s.theirs[..4].copy_from_slice(&field::<[u8; 4]>(sk, o.daddr));
        }
        Some(s)
    }

    /// The socket error from the BTF-typed tracepoint, which hands over the socket itself: the
    /// error joins its socket even when the kernel has already cleared the remote port (a
    /// disconnect reports after clearing it: children reset by their listener's close, an
    /// abortive close). Endpoints come from the socket, as the classic tracepoint takes them.
    #[btf_tracepoint(function = "inet_sk_error_report")]
    pub fn inet_sk_error_report_btf(ctx: BtfTracePointContext) -> u32 {
        let sk: u64 = ctx.arg(0);
        let o = SOCK_OFFSETS.load();
        let Some(s) = tcp_sock(sk, &o) else {
            return 0;
        };
        if !wanted_or_cleared(&s.ends) {
            return 0;
        }
        let error: i32 = field(sk, o.err);
        if !reported(error, s.ends.dport) {
            return 0;
        }
        let Some(place) = place(sk, true) else {
            return 0;
        };
        let Some(mut e) = reserve::<ErrorEvent, _>(&ctx) else {
            return 0;
        };
        let p = e.as_mut_ptr();
        unsafe {
            let h = &raw mut (*p).hdr;
            header(h, Body::Error, sk, place, false);
            set_endpoints(h, &s);
            (*p).error = error;
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
