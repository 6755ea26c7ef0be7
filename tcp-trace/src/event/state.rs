//! TCP states by their kernel names.

use std::{borrow::Cow, fmt};

use tcp_trace_common::tcp_state as ts;

/// A kernel TCP state number with its kernel name (without `TCP_`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TcpState(pub i32);

impl TcpState {
    /// TCP_ESTABLISHED
    pub const ESTABLISHED: Self = Self(ts::ESTABLISHED);
    /// TCP_SYN_SENT
    pub const SYN_SENT: Self = Self(ts::SYN_SENT);
    /// TCP_SYN_RECV
    pub const SYN_RECV: Self = Self(ts::SYN_RECV);
    /// TCP_FIN_WAIT1
    pub const FIN_WAIT1: Self = Self(ts::FIN_WAIT1);
    /// TCP_FIN_WAIT2
    pub const FIN_WAIT2: Self = Self(ts::FIN_WAIT2);
    /// TCP_TIME_WAIT
    pub const TIME_WAIT: Self = Self(ts::TIME_WAIT);
    /// TCP_CLOSE
    pub const CLOSE: Self = Self(ts::CLOSE);
    /// TCP_CLOSE_WAIT
    pub const CLOSE_WAIT: Self = Self(ts::CLOSE_WAIT);
    /// TCP_LAST_ACK
    pub const LAST_ACK: Self = Self(ts::LAST_ACK);
    /// TCP_LISTEN
    pub const LISTEN: Self = Self(ts::LISTEN);
    /// TCP_CLOSING
    pub const CLOSING: Self = Self(ts::CLOSING);
    /// TCP_NEW_SYN_RECV
    pub const NEW_SYN_RECV: Self = Self(ts::NEW_SYN_RECV);

    const NAMES: [&'static str; 12] = [
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];

    /// The kernel name, or `None` for a number this build does not know.
    pub fn known_name(self) -> Option<&'static str> {
        usize::try_from(self.0 - 1)
            .ok()
            .and_then(|i| Self::NAMES.get(i).copied())
    }

    /// The name as printed: borrowed for known states, `UNKNOWN(n)` otherwise.
    pub fn name(self) -> Cow<'static, str> {
        match self.known_name() {
            Some(n) => Cow::Borrowed(n),
            None => Cow::Owned(format!("UNKNOWN({})", self.0)),
        }
    }

    /// Parses a state as operators type it: the kernel's name or `ss`'s (`CLOSE-WAIT`,
    /// `FIN-WAIT-2`, `ESTAB`), in any case, with `-`, `_` or neither between words and an
    /// optional `TCP_` prefix.
    pub fn from_name(name: &str) -> Option<Self> {
        let squash = |s: &str| -> String {
            s.chars()
                .filter(|c| !matches!(c, '-' | '_'))
                .map(|c| c.to_ascii_uppercase())
                .collect()
        };
        let given = squash(name);
        let bare = given.strip_prefix("TCP").unwrap_or(&given);
        let bare = if bare == "ESTAB" { "ESTABLISHED" } else { bare };
        Self::NAMES
            .iter()
            .position(|n| squash(n) == bare)
            .map(|i| Self(i as i32 + 1))
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.known_name() {
            Some(n) => f.write_str(n),
            None => write!(f, "UNKNOWN({})", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for n in 1..=12 {
            let s = TcpState(n);
            assert_eq!(TcpState::from_name(&s.to_string()), Some(s));
        }
        assert_eq!(
            TcpState::from_name("tcp_close_wait"),
            Some(TcpState::CLOSE_WAIT)
        );
        for ss in ["CLOSE-WAIT", "close_wait", "CloseWait", "TCP_CLOSE_WAIT"] {
            assert_eq!(TcpState::from_name(ss), Some(TcpState::CLOSE_WAIT), "{ss}");
        }
        for ss in ["FIN-WAIT-2", "FIN_WAIT2", "fin_wait_2", "finwait2"] {
            assert_eq!(TcpState::from_name(ss), Some(TcpState::FIN_WAIT2), "{ss}");
        }
        assert_eq!(TcpState::from_name("ESTAB"), Some(TcpState::ESTABLISHED));
        assert_eq!(TcpState::from_name("close"), Some(TcpState::CLOSE));
        assert_eq!(TcpState::from_name("nope"), None);
    }
}
