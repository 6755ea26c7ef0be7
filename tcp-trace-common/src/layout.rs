//! Tracepoint record layouts the kernel programs are compiled against, and how userspace fits
//! them to the running kernel.
//!
//! The offsets below are those of a kernel whose common trace header is 8 bytes. Kernels move
//! whole records: PREEMPT_RT kernels add `common_preempt_lazy_count` to the header, shifting every
//! field by 8, or by 4 where the first field is an `int`. So a program never reads its record at fixed offsets: it copies one [`Window`] of
//! the record, starting `shift` bytes later than compiled (byte `slot` of the load-time global
//! `SHIFTS`), and reads its fields from that copy. Userspace measures `shift` from the
//! running kernel's `format` file and accepts a program only if *every* field it reads sits at
//! its compiled offset plus that shift with the same size; otherwise it names the field. A
//! tracepoint whose fields changed (not moved) gets one program per layout; userspace attaches
//! the one the format file matches.

/// One field of a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Name as in the `format` file.
    pub name: &'static str,
    /// Byte offset in the record (with an 8-byte common header).
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

impl Field {
    const fn new(name: &'static str, offset: usize, size: usize) -> Self {
        Self { name, offset, size }
    }
}

/// The bytes of a record a program copies: every field it reads, from an 8-aligned compiled
/// start, in whole 8-byte words, so each field sits in the copy at its natural alignment
/// whatever the shift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// First byte copied (compiled offset).
    pub start: usize,
    /// 8-byte words copied.
    pub words: usize,
}

impl Window {
    /// The smallest window holding `fields`.
    pub const fn of(fields: &[Field]) -> Self {
        let (mut lo, mut hi, mut i) = (usize::MAX, 0, 0);
        while i < fields.len() {
            let f = fields[i];
            if f.offset < lo {
                lo = f.offset;
            }
            if f.offset + f.size > hi {
                hi = f.offset + f.size;
            }
            i += 1;
        }
        let start = lo / 8 * 8;
        Self {
            start,
            words: (hi - start).div_ceil(8),
        }
    }
}

/// The largest `shift` a program accepts (the kernel masks it to this, for the verifier).
pub const MAX_SHIFT: usize = 0xff;

/// A program, the tracepoint it attaches to and the fields it reads.
#[derive(Clone, Copy, Debug)]
pub struct Tracepoint {
    /// Category (directory under `events/`).
    pub category: &'static str,
    /// Tracepoint name.
    pub name: &'static str,
    /// The program's name in the eBPF object.
    pub program: &'static str,
    /// Its entry in the `SHIFTS` global.
    pub slot: usize,
    /// Fields the program reads unconditionally.
    pub fields: &'static [Field],
    /// A field read only when the kernel has it (userspace tells the program via a global).
    pub optional: Option<(Field, &'static str)>,
    /// What the user loses when this tracepoint cannot be attached (said once at start).
    pub loses: &'static str,
    /// What the user loses when this program is the one attached (an older layout), if
    /// anything (said once at start).
    pub partial: &'static str,
    /// The BTF-typed (`tp_btf`) program preferred to this one where the kernel has BTF, and
    /// what the user loses when this one runs instead (said once at start).
    pub btf: Option<(&'static str, &'static str)>,
}

/// Fields of `sock/inet_sock_set_state`.
pub mod set_state {
    use super::{Field, Window};
    /// Entry in `SHIFTS`.
    pub const SLOT: usize = 0;
    /// What the program copies.
    pub const WINDOW: Window = Window::of(ALL);
    /// `const void *skaddr`
    pub const SKADDR: Field = Field::new("skaddr", 8, 8);
    /// `int oldstate`
    pub const OLDSTATE: Field = Field::new("oldstate", 16, 4);
    /// `int newstate`
    pub const NEWSTATE: Field = Field::new("newstate", 20, 4);
    /// `__u16 sport`
    pub const SPORT: Field = Field::new("sport", 24, 2);
    /// `__u16 dport`
    pub const DPORT: Field = Field::new("dport", 26, 2);
    /// `__u16 family`
    pub const FAMILY: Field = Field::new("family", 28, 2);
    /// `__u16 protocol`
    pub const PROTOCOL: Field = Field::new("protocol", 30, 2);
    /// `__u8 saddr[4]`
    pub const SADDR: Field = Field::new("saddr", 32, 4);
    /// `__u8 daddr[4]`
    pub const DADDR: Field = Field::new("daddr", 36, 4);
    /// `__u8 saddr_v6[16]`
    pub const SADDR_V6: Field = Field::new("saddr_v6", 40, 16);
    /// `__u8 daddr_v6[16]`
    pub const DADDR_V6: Field = Field::new("daddr_v6", 56, 16);
    /// All of them.
    pub const ALL: &[Field] = &[
        SKADDR, OLDSTATE, NEWSTATE, SPORT, DPORT, FAMILY, PROTOCOL, SADDR, DADDR, SADDR_V6,
        DADDR_V6,
    ];
}

/// Fields of `tcp/tcp_retransmit_skb`.
pub mod retransmit_skb {
    use super::{Field, Window};
    /// Entry in `SHIFTS`.
    pub const SLOT: usize = 1;
    /// What the program copies.
    pub const WINDOW: Window = Window::of(&[SKADDR, DADDR_V6, ERR]);
    /// `const void *skaddr`
    pub const SKADDR: Field = Field::new("skaddr", 16, 8);
    /// `int state`
    pub const STATE: Field = Field::new("state", 24, 4);
    /// `__u16 sport`
    pub const SPORT: Field = Field::new("sport", 28, 2);
    /// `__u16 dport`
    pub const DPORT: Field = Field::new("dport", 30, 2);
    /// `__u16 family`
    pub const FAMILY: Field = Field::new("family", 32, 2);
    /// `__u8 saddr[4]`
    pub const SADDR: Field = Field::new("saddr", 34, 4);
    /// `__u8 daddr[4]`
    pub const DADDR: Field = Field::new("daddr", 38, 4);
    /// `__u8 saddr_v6[16]`
    pub const SADDR_V6: Field = Field::new("saddr_v6", 42, 16);
    /// `__u8 daddr_v6[16]`
    pub const DADDR_V6: Field = Field::new("daddr_v6", 58, 16);
    /// `int err` (recent kernels only).
    pub const ERR: Field = Field::new("err", 76, 4);
    /// The unconditional ones.
    pub const ALL: &[Field] = &[
        SKADDR, STATE, SPORT, DPORT, FAMILY, SADDR, DADDR, SADDR_V6, DADDR_V6,
    ];
}

/// Fields of `tcp/tcp_retransmit_synack`.
pub mod retransmit_synack {
    use super::{Field, Window};
    /// Entry in `SHIFTS`.
    pub const SLOT: usize = 2;
    /// What the program copies.
    pub const WINDOW: Window = Window::of(ALL);
    /// `const void *skaddr` (the listener)
    pub const SKADDR: Field = Field::new("skaddr", 8, 8);
    /// `const void *req`
    pub const REQ: Field = Field::new("req", 16, 8);
    /// `__u16 sport`
    pub const SPORT: Field = Field::new("sport", 24, 2);
    /// `__u16 dport`
    pub const DPORT: Field = Field::new("dport", 26, 2);
    /// `__u16 family`
    pub const FAMILY: Field = Field::new("family", 28, 2);
    /// `__u8 saddr[4]`
    pub const SADDR: Field = Field::new("saddr", 30, 4);
    /// `__u8 daddr[4]`
    pub const DADDR: Field = Field::new("daddr", 34, 4);
    /// `__u8 saddr_v6[16]`
    pub const SADDR_V6: Field = Field::new("saddr_v6", 38, 16);
    /// `__u8 daddr_v6[16]`
    pub const DADDR_V6: Field = Field::new("daddr_v6", 54, 16);
    /// All of them.
    pub const ALL: &[Field] = &[
        SKADDR, REQ, SPORT, DPORT, FAMILY, SADDR, DADDR, SADDR_V6, DADDR_V6,
    ];
}

/// Fields of `tcp/tcp_send_reset` (the 6.x layout with `sockaddr` images).
pub mod send_reset {
    use super::{Field, Window};
    /// Entry in `SHIFTS`.
    pub const SLOT: usize = 3;
    /// What the program copies.
    pub const WINDOW: Window = Window::of(ALL);
    /// `const void *skbaddr` (the packet answered; may be NULL)
    pub const SKBADDR: Field = Field::new("skbaddr", 8, 8);
    /// `const void *skaddr` (may be NULL)
    pub const SKADDR: Field = Field::new("skaddr", 16, 8);
    /// `int state`
    pub const STATE: Field = Field::new("state", 24, 4);
    /// `enum sk_rst_reason reason`
    pub const REASON: Field = Field::new("reason", 28, 4);
    /// `__u8 saddr[28]` (`struct sockaddr_in6`-sized image)
    pub const SADDR: Field = Field::new("saddr", 32, 28);
    /// `__u8 daddr[28]`
    pub const DADDR: Field = Field::new("daddr", 60, 28);
    /// All of them.
    pub const ALL: &[Field] = &[SKBADDR, SKADDR, STATE, REASON, SADDR, DADDR];
}

/// Fields of `tcp/tcp_send_reset` before the kernel stored `sockaddr` images and a `reason`
/// (Linux 6.1, for one): the packet, then the same fields at the same offsets as
/// `tcp_retransmit_skb` without `err`.
pub mod send_reset_v1 {
    pub use super::retransmit_skb::{
        DADDR, DADDR_V6, DPORT, FAMILY, SADDR, SADDR_V6, SKADDR, SPORT, STATE,
    };
    pub use super::send_reset::SKBADDR;
    use super::{Field, Window};
    /// Entry in `SHIFTS`.
    pub const SLOT: usize = 6;
    /// What the program copies.
    pub const WINDOW: Window = Window::of(ALL);
    /// All of them.
    pub const ALL: &[Field] = &[
        SKBADDR, SKADDR, STATE, SPORT, DPORT, FAMILY, SADDR, DADDR, SADDR_V6, DADDR_V6,
    ];
}

/// Fields of `tcp/tcp_retransmit_skb` before the record had a `family` (Linux 5.10, for one):
/// the addresses come in both forms, the IPv6 one v4-mapped for an IPv4 socket, and the
/// program takes the family from the socket.
pub mod retransmit_skb_v0 {
    pub use super::retransmit_skb::{DPORT, SKADDR, SPORT, STATE};
    use super::{Field, Window};
    /// Entry in `SHIFTS` (its newer layout's: only one of them is attached).
    pub const SLOT: usize = super::retransmit_skb::SLOT;
    /// What the program copies.
    pub const WINDOW: Window = Window::of(ALL);
    /// `__u8 saddr[4]`
    pub const SADDR: Field = Field::new("saddr", 32, 4);
    /// `__u8 daddr[4]`
    pub const DADDR: Field = Field::new("daddr", 36, 4);
    /// `__u8 saddr_v6[16]`
    pub const SADDR_V6: Field = Field::new("saddr_v6", 40, 16);
    /// `__u8 daddr_v6[16]`
    pub const DADDR_V6: Field = Field::new("daddr_v6", 56, 16);
    /// All of them.
    pub const ALL: &[Field] = &[
        SKADDR, STATE, SPORT, DPORT, SADDR, DADDR, SADDR_V6, DADDR_V6,
    ];
}

/// Fields of `tcp/tcp_send_reset` without a `family` (Linux 5.10): the packet, then the
/// fields of [`retransmit_skb_v0`].
pub mod send_reset_v0 {
    pub use super::retransmit_skb_v0::{
        DADDR, DADDR_V6, DPORT, SADDR, SADDR_V6, SKADDR, SPORT, STATE,
    };
    pub use super::send_reset::SKBADDR;
    use super::{Field, Window};
    /// Entry in `SHIFTS`.
    pub const SLOT: usize = super::send_reset_v1::SLOT;
    /// What the program copies.
    pub const WINDOW: Window = Window::of(ALL);
    /// All of them.
    pub const ALL: &[Field] = &[
        SKBADDR, SKADDR, STATE, SPORT, DPORT, SADDR, DADDR, SADDR_V6, DADDR_V6,
    ];
}

/// Fields of `tcp/tcp_retransmit_synack` without a `family` (Linux 5.10).
pub mod retransmit_synack_v0 {
    pub use super::retransmit_synack::{DPORT, REQ, SKADDR, SPORT};
    use super::{Field, Window};
    /// Entry in `SHIFTS`.
    pub const SLOT: usize = super::retransmit_synack::SLOT;
    /// What the program copies.
    pub const WINDOW: Window = Window::of(ALL);
    /// `__u8 saddr[4]`
    pub const SADDR: Field = Field::new("saddr", 28, 4);
    /// `__u8 daddr[4]`
    pub const DADDR: Field = Field::new("daddr", 32, 4);
    /// `__u8 saddr_v6[16]`
    pub const SADDR_V6: Field = Field::new("saddr_v6", 36, 16);
    /// `__u8 daddr_v6[16]`
    pub const DADDR_V6: Field = Field::new("daddr_v6", 52, 16);
    /// All of them.
    pub const ALL: &[Field] = &[SKADDR, REQ, SPORT, DPORT, SADDR, DADDR, SADDR_V6, DADDR_V6];
}

/// Fields of `tcp/tcp_receive_reset`.
pub mod receive_reset {
    use super::{Field, Window};
    /// Entry in `SHIFTS`.
    pub const SLOT: usize = 4;
    /// What the program copies.
    pub const WINDOW: Window = Window::of(ALL);
    /// `const void *skaddr`
    pub const SKADDR: Field = Field::new("skaddr", 8, 8);
    /// `__u16 sport`
    pub const SPORT: Field = Field::new("sport", 16, 2);
    /// `__u16 dport`
    pub const DPORT: Field = Field::new("dport", 18, 2);
    /// `__u16 family`
    pub const FAMILY: Field = Field::new("family", 20, 2);
    /// `__u8 saddr[4]`
    pub const SADDR: Field = Field::new("saddr", 22, 4);
    /// `__u8 daddr[4]`
    pub const DADDR: Field = Field::new("daddr", 26, 4);
    /// `__u8 saddr_v6[16]`
    pub const SADDR_V6: Field = Field::new("saddr_v6", 30, 16);
    /// `__u8 daddr_v6[16]`
    pub const DADDR_V6: Field = Field::new("daddr_v6", 46, 16);
    /// `__u64 sock_cookie`
    pub const COOKIE: Field = Field::new("sock_cookie", 64, 8);
    /// All of them.
    pub const ALL: &[Field] = &[
        SKADDR, SPORT, DPORT, FAMILY, SADDR, DADDR, SADDR_V6, DADDR_V6, COOKIE,
    ];
}

/// Fields of `tcp/tcp_receive_reset` without a `family` (Linux 5.10).
pub mod receive_reset_v0 {
    pub use super::receive_reset::{COOKIE, DPORT, SKADDR, SPORT};
    use super::{Field, Window};
    /// Entry in `SHIFTS`.
    pub const SLOT: usize = super::receive_reset::SLOT;
    /// What the program copies.
    pub const WINDOW: Window = Window::of(ALL);
    /// `__u8 saddr[4]`
    pub const SADDR: Field = Field::new("saddr", 20, 4);
    /// `__u8 daddr[4]`
    pub const DADDR: Field = Field::new("daddr", 24, 4);
    /// `__u8 saddr_v6[16]`
    pub const SADDR_V6: Field = Field::new("saddr_v6", 28, 16);
    /// `__u8 daddr_v6[16]`
    pub const DADDR_V6: Field = Field::new("daddr_v6", 44, 16);
    /// All of them.
    pub const ALL: &[Field] = &[
        SKADDR, SPORT, DPORT, SADDR, DADDR, SADDR_V6, DADDR_V6, COOKIE,
    ];
}

/// Fields of `sock/inet_sk_error_report`.
pub mod error_report {
    use super::{Field, Window};
    /// Entry in `SHIFTS`.
    pub const SLOT: usize = 5;
    /// What the program copies.
    pub const WINDOW: Window = Window::of(ALL);
    /// `int error`
    pub const ERROR: Field = Field::new("error", 8, 4);
    /// `__u16 sport`
    pub const SPORT: Field = Field::new("sport", 12, 2);
    /// `__u16 dport`
    pub const DPORT: Field = Field::new("dport", 14, 2);
    /// `__u16 family`
    pub const FAMILY: Field = Field::new("family", 16, 2);
    /// `__u16 protocol`
    pub const PROTOCOL: Field = Field::new("protocol", 18, 2);
    /// `__u8 saddr[4]`
    pub const SADDR: Field = Field::new("saddr", 20, 4);
    /// `__u8 daddr[4]`
    pub const DADDR: Field = Field::new("daddr", 24, 4);
    /// `__u8 saddr_v6[16]`
    pub const SADDR_V6: Field = Field::new("saddr_v6", 28, 16);
    /// `__u8 daddr_v6[16]`
    pub const DADDR_V6: Field = Field::new("daddr_v6", 44, 16);
    /// All of them.
    pub const ALL: &[Field] = &[
        ERROR, SPORT, DPORT, FAMILY, PROTOCOL, SADDR, DADDR, SADDR_V6, DADDR_V6,
    ];
}

/// Global (`u8`) telling `tcp_retransmit_skb` whether the kernel has the `err` field.
pub const RETRANSMIT_HAS_ERR: &str = "RETRANSMIT_HAS_ERR";

/// Global `u64`: byte `slot` is that program's `shift` (see the module documentation); one load
/// gives a program its shift.
pub const SHIFTS: &str = "SHIFTS";

/// Entries in `SHIFTS`.
pub const SLOTS: usize = 8;

/// `reason` of a reset sent on a kernel whose tracepoint has none.
pub const NO_REASON: u32 = u32::MAX;

/// What the user loses without each tracepoint, or with an older layout (said once at start).
const LOSES_RETRANSMITS: &str = "retransmissions are not seen, so connections retransmitting \
                                 into the void (peer gone, half-open) are not reported";
const LOSES_SYNACKS: &str = "SYN-ACK retransmissions are not seen, so handshakes a client never \
                             completes are not reported";
const LOSES_RESETS_SENT: &str = "resets this host sends are not reported";
const LOSES_RESETS_RECEIVED: &str =
    "resets received are not reported (a reset still shows as the ECONNRESET it causes)";
const SOCKET_RESETS_ONLY: &str = "this kernel's tcp/tcp_send_reset (no `reason` field) fires \
    only for resets a socket sends: resets for no socket (refused connects, segments for \
    connections the host does not have) are not reported, and no reset has a reason";

/// Every program tcp-trace attaches. The first is required; a missing or different one of the
/// others only disables that program. Programs for the same tracepoint are alternatives, tried
/// in order: the first whose layout the kernel has is attached.
pub const TRACEPOINTS: &[Tracepoint] = &[
    Tracepoint {
        category: "sock",
        name: "inet_sock_set_state",
        program: "inet_sock_set_state",
        slot: set_state::SLOT,
        fields: set_state::ALL,
        optional: None,
        loses: "",
        partial: "",
        btf: None,
    },
    Tracepoint {
        category: "tcp",
        name: "tcp_retransmit_skb",
        program: "tcp_retransmit_skb",
        slot: retransmit_skb::SLOT,
        fields: retransmit_skb::ALL,
        optional: Some((retransmit_skb::ERR, RETRANSMIT_HAS_ERR)),
        loses: LOSES_RETRANSMITS,
        partial: "",
        btf: None,
    },
    Tracepoint {
        category: "tcp",
        name: "tcp_retransmit_skb",
        program: "tcp_retransmit_skb_v0",
        slot: retransmit_skb_v0::SLOT,
        fields: retransmit_skb_v0::ALL,
        optional: None,
        loses: LOSES_RETRANSMITS,
        partial: "",
        btf: None,
    },
    Tracepoint {
        category: "tcp",
        name: "tcp_retransmit_synack",
        program: "tcp_retransmit_synack",
        slot: retransmit_synack::SLOT,
        fields: retransmit_synack::ALL,
        optional: None,
        loses: LOSES_SYNACKS,
        partial: "",
        btf: None,
    },
    Tracepoint {
        category: "tcp",
        name: "tcp_retransmit_synack",
        program: "tcp_retransmit_synack_v0",
        slot: retransmit_synack_v0::SLOT,
        fields: retransmit_synack_v0::ALL,
        optional: None,
        loses: LOSES_SYNACKS,
        partial: "",
        btf: None,
    },
    Tracepoint {
        category: "tcp",
        name: "tcp_send_reset",
        program: "tcp_send_reset",
        slot: send_reset::SLOT,
        fields: send_reset::ALL,
        optional: None,
        loses: LOSES_RESETS_SENT,
        partial: "",
        btf: None,
    },
    Tracepoint {
        category: "tcp",
        name: "tcp_send_reset",
        program: "tcp_send_reset_v1",
        slot: send_reset_v1::SLOT,
        fields: send_reset_v1::ALL,
        optional: None,
        loses: LOSES_RESETS_SENT,
        partial: SOCKET_RESETS_ONLY,
        btf: None,
    },
    Tracepoint {
        category: "tcp",
        name: "tcp_send_reset",
        program: "tcp_send_reset_v0",
        slot: send_reset_v0::SLOT,
        fields: send_reset_v0::ALL,
        optional: None,
        loses: LOSES_RESETS_SENT,
        partial: SOCKET_RESETS_ONLY,
        btf: None,
    },
    Tracepoint {
        category: "tcp",
        name: "tcp_receive_reset",
        program: "tcp_receive_reset",
        slot: receive_reset::SLOT,
        fields: receive_reset::ALL,
        optional: None,
        loses: LOSES_RESETS_RECEIVED,
        partial: "",
        btf: None,
    },
    Tracepoint {
        category: "tcp",
        name: "tcp_receive_reset",
        program: "tcp_receive_reset_v0",
        slot: receive_reset_v0::SLOT,
        fields: receive_reset_v0::ALL,
        optional: None,
        loses: LOSES_RESETS_RECEIVED,
        partial: "",
        btf: None,
    },
    Tracepoint {
        category: "sock",
        name: "inet_sk_error_report",
        program: "inet_sk_error_report",
        slot: error_report::SLOT,
        fields: error_report::ALL,
        optional: None,
        loses: "`watch` shows no `error` events (ECONNREFUSED, ETIMEDOUT, ECONNRESET) and \
                `serve`'s tcp_trace_socket_errors_total stays 0: the error that ends a connection \
                is read from its socket at its close instead, so close causes stay exact, and an \
                error that leaves a connection open is not seen",
        partial: "",
        btf: Some((
            "inet_sk_error_report_btf",
            "errors reported after a disconnect join no socket",
        )),
    },
];

// Every window fits the kernel's copy and every slot is in range.
const _: () = {
    let mut i = 0;
    while i < TRACEPOINTS.len() {
        assert!(TRACEPOINTS[i].slot < SLOTS);
        i += 1;
    }
};
