//! Byte offsets of kernel struct fields, read from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`).
//!
//! The kernel programs are built without CO-RE relocations, so the few struct fields they read
//! through a socket pointer (its network namespace and cgroup) are located here, at load time,
//! and handed to them as [`KernelOffsets`]. Only what that needs is parsed: the type table, the
//! names, and struct/union members (descending through typedefs, qualifiers and anonymous
//! members). aya-obj keeps its BTF type lookup private; the BTF crates on crates.io are LGPL.

use anyhow::{bail, Context, Result};
use tcp_trace_common::{KernelOffsets, SockOffsets};

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// A parsed BTF blob: where each type starts, and the string section.
pub struct Btf {
    data: Vec<u8>,
    /// Byte offset of type id `i + 1`.
    types: Vec<usize>,
    strings: usize,
    strings_end: usize,
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

impl Btf {
    /// The running kernel's BTF.
    pub fn kernel() -> Result<Self> {
        let path = "/sys/kernel/btf/vmlinux";
        Self::parse(std::fs::read(path).with_context(|| format!("reading {path}"))?)
    }

    /// Parses a little-endian BTF blob.
    pub fn parse(data: Vec<u8>) -> Result<Self> {
        let head = |at| u32_at(&data, at).context("BTF header truncated");
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            bail!("not little-endian BTF");
        }
        let hdr_len = head(4)? as usize;
        let (type_off, type_len) = (head(8)? as usize, head(12)? as usize);
        let (str_off, str_len) = (head(16)? as usize, head(20)? as usize);
        let start = hdr_len + type_off;
        let end = start + type_len;
        let strings = hdr_len + str_off;
        if end > data.len() || strings + str_len > data.len() {
            bail!("BTF sections exceed the blob");
        }
        let mut types = Vec::new();
        let mut at = start;
        while at < end {
            let info = u32_at(&data, at + 4).context("BTF type truncated")?;
            types.push(at);
            at += 12 + trailing(info)?;
        }
        Ok(Self {
            data,
            types,
            strings,
            strings_end: strings + str_len,
        })
    }

    fn ty(&self, id: u32) -> Option<(u32, u32, u32, usize)> {
        let at = *self.types.get((id as usize).checked_sub(1)?)?;
        let d = &self.data;
        Some((u32_at(d, at)?, u32_at(d, at + 4)?, u32_at(d, at + 8)?, at))
    }

    fn name(&self, off: u32) -> &[u8] {
        let s = &self.data[self.strings..self.strings_end];
        let rest = s.get(off as usize..).unwrap_or(&[]);
        &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())]
    }

    /// The id of the struct called `name`.
    pub fn find_struct(&self, name: &str) -> Option<u32> {
        (1..=self.types.len() as u32).find(|id| {
            self.ty(*id).is_some_and(|(n, info, _, _)| {
                kind(info) == KIND_STRUCT && vlen(info) > 0 && self.name(n) == name.as_bytes()
            })
        })
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.ty(id) {
                Some((_, info, next, _))
                    if matches!(
                        kind(info),
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = next
                }
                _ => break,
            }
        }
        id
    }

    /// Byte offset and type of member `name` of struct/union `id`, looking inside anonymous
    /// members too.
    fn member(&self, id: u32, name: &str) -> Option<(u32, u32)> {
        let (_, info, _, at) = self.ty(self.resolve(id))?;
        if !matches!(kind(info), KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for i in 0..vlen(info) as usize {
            let m = at + 12 + 12 * i;
            let (n, ty, off) = (
                u32_at(&self.data, m)?,
                u32_at(&self.data, m + 4)?,
                u32_at(&self.data, m + 8)?,
            );
            let bits = if info >> 31 != 0 {
                off & 0xff_ffff
            } else {
                off
            };
            // A bitfield is no byte field, even where it starts on a byte.
            let bitfield = info >> 31 != 0 && off >> 24 != 0;
            if bits % 8 != 0 || bitfield {
                continue;
            }
            let here = self.name(n);
            if here == name.as_bytes() {
                return Some((bits / 8, ty));
            }
            if here.is_empty() {
                if let Some((inner, t)) = self.member(ty, name) {
                    return Some((bits / 8 + inner, t));
                }
            }
        }
        None
    }

    /// Byte offset of `path` (e.g. `["__sk_common", "skc_net", "net"]`) in struct `name`.
    pub fn offset(&self, name: &str, path: &[&str]) -> Option<u32> {
        let mut ty = self.find_struct(name)?;
        let mut total = 0;
        for field in path {
            let (off, next) = self.member(ty, field)?;
            total += off;
            ty = next;
        }
        Some(total)
    }

    /// Where the kernel programs find a socket's network namespace and cgroup; a part the
    /// kernel lacks stays 0 (not read).
    pub fn kernel_offsets(&self) -> KernelOffsets {
        let mut o = KernelOffsets::default();
        if let (Some(sn), Some(ni)) = (
            self.offset("sock", &["__sk_common", "skc_net", "net"]),
            self.offset("net", &["ns", "inum"]),
        ) {
            (o.sock_net, o.net_inum) = (sn, ni);
        }
        // Before 5.15 the pointer is the `val` of a union whose low bits, when set, say it
        // holds net_cls/net_prio data instead (the programs then read no cgroup).
        let sock_cgroup = self
            .offset("sock", &["sk_cgrp_data", "cgroup"])
            .or_else(|| self.offset("sock", &["sk_cgrp_data", "val"]));
        let ancestors = match self.offset("cgroup", &["ancestors"]) {
            Some(a) => Some((a, 0)),
            None => self.offset("cgroup", &["ancestor_ids"]).map(|a| (a, 1)),
        };
        if let (Some(sc), Some(kn), Some(id), Some(lv), Some((an, ids))) = (
            sock_cgroup,
            self.offset("cgroup", &["kn"]),
            self.offset("kernfs_node", &["id"]),
            self.offset("cgroup", &["level"]),
            ancestors,
        ) {
            (o.sock_cgroup, o.cgroup_kn, o.kn_id) = (sc, kn, id);
            (o.cgroup_level, o.cgroup_ancestors, o.ancestor_ids) = (lv, an, ids);
        }
        if let (Some(h), Some(nh), Some(th)) = (
            self.offset("sk_buff", &["head"]),
            self.offset("sk_buff", &["network_header"]),
            self.offset("sk_buff", &["transport_header"]),
        ) {
            (o.skb_head, o.skb_network_header, o.skb_transport_header) = (h, nh, th);
        }
        o
    }

    /// Where a socket keeps its endpoints, protocol and error (all 0 when any is missing), and
    /// its user timeout.
    pub fn sock_offsets(&self) -> SockOffsets {
        let common = |f: &str| self.offset("sock", &["__sk_common", f]);
        // Read on its own: the retransmit program needs nothing else.
        let user_timeout = self
            .offset("inet_connection_sock", &["icsk_user_timeout"])
            .unwrap_or(0);
        let sock = |f: &str| self.offset("sock", &[f]);
        // What a closing socket still holds of why it closed (the state program reads it).
        let icsk = |f: &str| self.offset("inet_connection_sock", &[f]);
        let timer = match (
            icsk("icsk_pending"),
            icsk("icsk_retransmits"),
            icsk("icsk_probes_out"),
        ) {
            (Some(p), Some(r), Some(o)) => (p, r, o),
            _ => (0, 0, 0),
        };
        let ending = match (sock("sk_err"), sock("sk_err_soft"), sock("sk_shutdown")) {
            (Some(err), Some(err_soft), Some(shutdown)) => SockOffsets {
                err,
                err_soft,
                shutdown,
                icsk_pending: timer.0,
                icsk_retransmits: timer.1,
                icsk_probes_out: timer.2,
                user_timeout,
                ..SockOffsets::default()
            },
            _ => SockOffsets {
                user_timeout,
                ..SockOffsets::default()
            },
        };
        let found = (
            common("skc_family"),
            // The bound port (`skc_num`) is cleared when the port is released, before some
            // reports; the classic tracepoint reports `inet_sport`, as this does.
            self.offset("inet_sock", &["inet_sport"]),
            common("skc_dport"),
            common("skc_rcv_saddr"),
            common("skc_daddr"),
            sock("sk_protocol"),
            sock("sk_err"),
        );
        let (
            Some(family),
            Some(sport),
            Some(dport),
            Some(rcv_saddr),
            Some(daddr),
            Some(protocol),
            Some(err),
        ) = found
        else {
            return ending;
        };
        SockOffsets {
            family,
            sport,
            dport,
            rcv_saddr,
            daddr,
            v6_rcv_saddr: common("skc_v6_rcv_saddr").unwrap_or(0),
            v6_daddr: common("skc_v6_daddr").unwrap_or(0),
            protocol,
            err,
            ..ending
        }
    }
}

fn kind(info: u32) -> u32 {
    (info >> 24) & 0x1f
}

fn vlen(info: u32) -> u32 {
    info & 0xffff
}

/// Bytes after the 12-byte common part of a type with this `info`.
fn trailing(info: u32) -> Result<usize> {
    let n = vlen(info) as usize;
    Ok(match kind(info) {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * n,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * n,
        0 => bail!("BTF type of kind 0"),
        k if k <= KIND_ENUM64 => 0,
        k => bail!("BTF type of unknown kind {k}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF: `struct inner { int a; int b; }`, `struct outer { int x; union { struct
    /// inner in; }; }` with `in` at byte 8.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0a\0b\0inner\0outer\0x\0in\0";
        let s = |name: &str| {
            let pat = format!("\0{name}\0");
            strings
                .windows(pat.len())
                .position(|w| w == pat.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t: Vec<u32> = Vec::new();
        // 1: int
        t.extend([s("int"), KIND_INT << 24, 4, 32]);
        // 2: struct inner { a @0, b @32 bits }
        t.extend([s("inner"), KIND_STRUCT << 24 | 2, 8]);
        t.extend([s("a"), 1, 0, s("b"), 1, 32]);
        // 3: anonymous union { struct inner in @0 }
        t.extend([0, KIND_UNION << 24 | 1, 8, s("in"), 2, 0]);
        // 4: typedef of the union
        t.extend([0, KIND_TYPEDEF << 24, 3]);
        // 5: struct outer { x @0, <anon> @64 bits }
        t.extend([s("outer"), KIND_STRUCT << 24 | 2, 16]);
        t.extend([s("x"), 1, 0, 0, 4, 64]);
        let types: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut d = Vec::new();
        d.extend(MAGIC.to_le_bytes());
        d.extend([1u8, 0]);
        for v in [24u32, 0, types.len() as u32, types.len() as u32] {
            d.extend(v.to_le_bytes());
        }
        d.extend((strings.len() as u32).to_le_bytes());
        d.extend(types);
        d.extend(strings);
        d
    }

    #[test]
    fn offsets_through_anonymous_members_and_typedefs() {
        let btf = Btf::parse(sample()).unwrap();
        assert_eq!(btf.offset("outer", &["x"]), Some(0));
        assert_eq!(btf.offset("outer", &["in", "b"]), Some(12));
        assert_eq!(btf.offset("inner", &["b"]), Some(4));
        assert_eq!(btf.offset("outer", &["nope"]), None);
        assert_eq!(btf.offset("missing", &["x"]), None);
    }

    #[test]
    fn damaged_blobs_are_errors() {
        assert!(Btf::parse(vec![0; 10]).is_err());
        let mut d = sample();
        d.truncate(d.len() - 30);
        assert!(Btf::parse(d).is_err());
    }

    #[test]
    fn running_kernel_has_the_socket_fields() {
        // Every kernel this tool supports has BTF; CI runs on one.
        let Ok(btf) = Btf::kernel() else {
            assert!(std::env::var("CI").is_err(), "no kernel BTF under CI");
            return;
        };
        let o = btf.kernel_offsets();
        assert_ne!(o.sock_net, 0, "{o:?}");
        assert_ne!(o.sock_cgroup, 0, "{o:?}");
        assert_ne!(o.cgroup_ancestors, 0, "{o:?}");
        let s = btf.sock_offsets();
        for off in [
            s.family,
            s.err,
            s.err_soft,
            s.shutdown,
            s.icsk_pending,
            s.icsk_probes_out,
        ] {
            assert_ne!(off, 0, "{s:?}");
        }
    }
}
