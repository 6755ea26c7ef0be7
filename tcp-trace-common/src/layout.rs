//! Tracepoint record layouts the kernel programs are compiled against.
//!
//! These constants are the only place the offsets live: the kernel programs read
//! `ctx + FIELD.offset`, and userspace compares every [`Field`] with the running kernel's
//! `/sys/kernel/tracing/events/<category>/<name>/format` before attaching, refusing a program
//! whose layout differs (naming the field) instead of reading the wrong bytes.

/// One field of a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Name as in the `format` file.
    pub name: &'static str,
    /// Byte offset in the record.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

impl Field {
    const fn new(name: &'static str, offset: usize, size: usize) -> Self {
        Self { name, offset, size }
    }
}

/// A tracepoint, the program attached to it and the fields that program reads.
#[derive(Clone, Copy, Debug)]
pub struct Tracepoint {
    /// Category (directory under `events/`).
    pub category: &'static str,
    /// Tracepoint name.
    pub name: &'static str,
    /// Fields the program reads unconditionally.
    pub fields: &'static [Field],
    /// A field read only when the kernel has it (userspace tells the program via a global).
    pub optional: Option<(Field, &'static str)>,
}

/// Fields of `sock/inet_sock_set_state`.
pub mod set_state {
    use super::Field;
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
    use super::Field;
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
    use super::Field;
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
    use super::Field;
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
    pub const ALL: &[Field] = &[SKADDR, STATE, REASON, SADDR, DADDR];
}

/// Fields of `tcp/tcp_receive_reset`.
pub mod receive_reset {
    use super::Field;
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

/// Fields of `sock/inet_sk_error_report`.
pub mod error_report {
    use super::Field;
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

/// Every tracepoint tcp-trace attaches to; the program for each is named like the tracepoint.
/// The first is required; a missing or different one of the others only disables that program.
pub const TRACEPOINTS: &[Tracepoint] = &[
    Tracepoint {
        category: "sock",
        name: "inet_sock_set_state",
        fields: set_state::ALL,
        optional: None,
    },
    Tracepoint {
        category: "tcp",
        name: "tcp_retransmit_skb",
        fields: retransmit_skb::ALL,
        optional: Some((retransmit_skb::ERR, RETRANSMIT_HAS_ERR)),
    },
    Tracepoint {
        category: "tcp",
        name: "tcp_retransmit_synack",
        fields: retransmit_synack::ALL,
        optional: None,
    },
    Tracepoint {
        category: "tcp",
        name: "tcp_send_reset",
        fields: send_reset::ALL,
        optional: None,
    },
    Tracepoint {
        category: "tcp",
        name: "tcp_receive_reset",
        fields: receive_reset::ALL,
        optional: None,
    },
    Tracepoint {
        category: "sock",
        name: "inet_sk_error_report",
        fields: error_report::ALL,
        optional: None,
    },
];
