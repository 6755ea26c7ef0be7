//! NDJSON, declared once: the keys every object about a connection carries ([`CONN_KEYS`],
//! the [`JsonConn`] prefix serde writes for `stuck`, `life` and half-open objects), the keys of
//! each `watch` type ([`WATCH_KEYS`]), and the small writer `watch` uses on its hot path, which
//! appends an object to a buffer without building a value first. Unit tests hold the writers,
//! these tables and the README's documented examples to the same keys.

use std::{io::Write, net::IpAddr};

use serde::Serialize;

use crate::{
    event::{family_name, Comm, Event, Owner, Place, Tuple},
    host::cgroup::Container,
};

/// The keys of every object about one connection, in order, after `type` and `ts`.
pub const CONN_KEYS: [&str; 11] = [
    "sock",
    "family",
    "saddr",
    "sport",
    "daddr",
    "dport",
    "pid",
    "comm",
    "netns",
    "cgroup",
    "cgroup_id",
];

/// The keys `watch --json` adds after [`CONN_KEYS`], per `type`. A `lost` object has only the
/// first eight connection keys (all `null`) and then `count`.
pub const WATCH_KEYS: [(&str, &[&str]); 8] = [
    ("state", &["old", "new", "ms_in_old", "cause"]),
    ("end", &["state", "ms_in_state", "cause", "evidence"]),
    ("retransmit", &["state"]),
    ("synack_retransmit", &[]),
    ("reset_sent", &["state", "reason", "reason_name"]),
    ("reset_received", &[]),
    ("error", &["error"]),
    ("lost", &["count"]),
];

/// The fields every JSON object about one connection starts with (flattened into it): the
/// same names and meanings as in `watch --json`.
#[derive(Serialize)]
pub struct JsonConn {
    sock: Option<String>,
    family: &'static str,
    saddr: String,
    sport: u16,
    daddr: String,
    dport: u16,
    pid: Option<u32>,
    comm: Option<String>,
    /// Only for a name that is not valid UTF-8: its bytes, in hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    comm_bytes: Option<String>,
    netns: Option<u32>,
    cgroup: Option<String>,
    cgroup_id: Option<u64>,
    /// Only when the cgroup path names them (see [`Container`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_uid: Option<String>,
}

impl JsonConn {
    /// A connection's socket (0 or `None`: unknown), endpoints and owner.
    pub fn new(sock: Option<u64>, t: &Tuple, pid: Option<u32>, comm: Option<&Comm>) -> Self {
        let (comm, comm_bytes) = match comm.map(Comm::json_text) {
            Some((text, bytes)) => (Some(text.into_owned()), bytes),
            None => (None, None),
        };
        Self {
            sock: sock.filter(|s| *s != 0).map(sock_hex),
            family: family_name(&t.saddr),
            saddr: t.saddr.to_string(),
            sport: t.sport,
            daddr: t.daddr.to_string(),
            dport: t.dport,
            pid,
            comm,
            comm_bytes,
            netns: None,
            cgroup: None,
            cgroup_id: None,
            container_id: None,
            pod_uid: None,
        }
    }

    /// Adds the socket's network namespace and cgroup (0 / `None`: unknown).
    pub fn placed(mut self, place: Place, cgroup: Option<&str>) -> Self {
        self.netns = (place.netns != 0).then_some(place.netns);
        self.cgroup_id = (place.cgroup != 0).then_some(place.cgroup);
        self.cgroup = cgroup.map(str::to_string);
        let c = cgroup.map(Container::of).unwrap_or_default();
        self.container_id = c.id.map(str::to_string);
        self.pod_uid = c.pod_uid;
        self
    }
}

/// Appends `,"container_id":…,"pod_uid":…` when cgroup path `cgroup` names them (as
/// [`JsonConn`] does).
pub(super) fn container(out: &mut Vec<u8>, cgroup: Option<&str>) {
    let Some(c) = cgroup.map(Container::of).filter(|c| !c.is_none()) else {
        return;
    };
    if let Some(id) = c.id {
        next_key!(out, "container_id");
        plain(out, id);
    }
    if let Some(uid) = c.pod_uid {
        next_key!(out, "pod_uid");
        plain(out, &uid);
    }
}

/// The kernel socket id as printed (`0xffff…`).
pub fn sock_hex(sock: u64) -> String {
    format!("{sock:#x}")
}

/// Appends `,"key":` (every key but the first) as one constant: one copy per key on the hot
/// path. Keys are literals: nothing to escape.
macro_rules! next_key {
    ($out:expr, $k:literal) => {
        $out.extend_from_slice(concat!(",\"", $k, "\":").as_bytes())
    };
}
pub(super) use next_key;

pub(super) fn int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// A string that needs JSON escaping (only free-form text: task names).
pub(super) fn text(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        return plain(out, s); // the usual name: nothing to escape
    }
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// A string known to need no escaping (names, addresses, timestamps).
pub(super) fn plain(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

pub(super) fn ip(out: &mut Vec<u8>, a: &IpAddr) {
    match a {
        IpAddr::V4(v4) => {
            // Composed on the stack, appended with one copy.
            let mut buf = [0u8; 17];
            let mut n = 0;
            let mut put = |b: u8| {
                buf[n] = b;
                n += 1;
            };
            put(b'"');
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    put(b'.');
                }
                if o >= 100 {
                    put(b'0' + o / 100);
                }
                if o >= 10 {
                    put(b'0' + o / 10 % 10);
                }
                put(b'0' + o % 10);
            }
            put(b'"');
            out.extend_from_slice(&buf[..n]);
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "\"{v6}\"");
        }
    }
}

pub(super) fn hex(out: &mut Vec<u8>, v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"\"0x");
    let nibbles = (16 - v.leading_zeros() as usize / 4).max(1);
    for i in (0..nibbles).rev() {
        out.push(DIGITS[((v >> (i * 4)) & 0xf) as usize]);
    }
    out.push(b'"');
}

pub(super) fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"null");
}

/// The fields every `watch` object starts with; endpoints `null` when `ev` is `None`.
pub(super) fn common(
    out: &mut Vec<u8>,
    kind: &str,
    ts: &str,
    sock: Option<u64>,
    ev: Option<&Event>,
    owner: Option<&Owner>,
) {
    out.extend_from_slice(b"{\"type\":");
    plain(out, kind);
    next_key!(out, "ts");
    plain(out, ts);
    next_key!(out, "sock");
    match sock {
        Some(s) => hex(out, s),
        None => null(out),
    }
    match ev {
        Some(ev) => {
            next_key!(out, "family");
            plain(out, family_name(&ev.saddr));
            next_key!(out, "saddr");
            ip(out, &ev.saddr);
            next_key!(out, "sport");
            int(out, ev.sport);
            next_key!(out, "daddr");
            ip(out, &ev.daddr);
            next_key!(out, "dport");
            int(out, ev.dport);
        }
        None => out.extend_from_slice(
            b",\"family\":null,\"saddr\":null,\"sport\":null,\"daddr\":null,\"dport\":null",
        ),
    }
    next_key!(out, "pid");
    match owner {
        Some(o) => int(out, o.pid),
        None => null(out),
    }
    next_key!(out, "comm");
    match owner {
        Some(o) => {
            let (name, bytes) = o.comm.json_text();
            text(out, &name);
            if let Some(hex) = bytes {
                next_key!(out, "comm_bytes");
                plain(out, &hex);
            }
        }
        None => null(out),
    }
}

/// The keys of a `watch --json` object of type `kind`, in order.
#[cfg(test)]
pub(crate) fn watch_keys(kind: &str) -> Option<Vec<&'static str>> {
    let (name, extra) = WATCH_KEYS.iter().find(|(k, _)| *k == kind)?;
    let conn = if *name == "lost" {
        &CONN_KEYS[..8]
    } else {
        &CONN_KEYS[..]
    };
    Some(
        ["type", "ts"]
            .iter()
            .chain(conn)
            .chain(extra.iter())
            .copied()
            .collect(),
    )
}

/// The keys of one JSON object, in the order written.
#[cfg(test)]
pub(crate) fn keys_in_order(line: &str) -> Vec<String> {
    struct Keys;
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut keys = Vec::new();
            while let Some(k) = m.next_key::<String>()? {
                m.next_value::<serde::de::IgnoredAny>()?;
                keys.push(k);
            }
            Ok(keys)
        }
    }
    use serde::Deserializer as _;
    serde_json::Deserializer::from_str(line)
        .deserialize_map(Keys)
        .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;

    #[test]
    fn addresses_and_names_are_the_json_serde_writes() {
        for a in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.100.9",
            "127.0.0.1",
            "::1",
            "fe80::1",
        ] {
            let a: IpAddr = a.parse().unwrap();
            let mut out = Vec::new();
            ip(&mut out, &a);
            assert_eq!(out, serde_json::to_vec(&a.to_string()).unwrap(), "{a}");
        }
        for name in [
            "nginx",
            "ev\nil\"\\",
            "tab\tx",
            "\u{1f}",
            "\x7f",
            "\u{2028}",
            "ünï",
            "",
        ] {
            let mut out = Vec::new();
            text(&mut out, name);
            assert_eq!(out, serde_json::to_vec(name).unwrap(), "{name:?}");
        }
    }

    #[test]
    fn the_connection_prefix_is_conn_keys() {
        let t = testkit::tuple("10.0.0.1", 1, "10.0.0.2", 2);
        let conn = JsonConn::new(Some(7), &t, Some(1), None).placed(Place::default(), None);
        let line = serde_json::to_string(&conn).unwrap();
        assert_eq!(keys_in_order(&line), CONN_KEYS);
    }

    /// Every example object in the README's `watch --json` schema has exactly the keys this
    /// module declares for its type, in order; and every type has an example.
    #[test]
    fn the_readme_documents_exactly_these_keys() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("### JSON schema (`watch --json`)")
            .expect("the section");
        let section = &readme[start..];
        let end = section[4..].find("\n#").map_or(section.len(), |e| e + 4);
        let mut seen = Vec::new();
        for line in section[..end].lines().map(str::trim) {
            if !line.starts_with("{\"type\":") {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let kind = v["type"].as_str().unwrap().to_string();
            let want = watch_keys(&kind).unwrap_or_else(|| panic!("undeclared type {kind}"));
            assert_eq!(keys_in_order(line), want, "README example of {kind}");
            seen.push(kind);
        }
        for (kind, _) in WATCH_KEYS {
            assert!(
                seen.iter().any(|s| s == kind),
                "no README example of {kind}"
            );
        }
    }
}
