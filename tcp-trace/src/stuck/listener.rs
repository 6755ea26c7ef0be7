//! Listeners that drop clients. When a listener's accept queue is full, the kernel drops the
//! final ACK of new handshakes (`ListenOverflows`): the client believes it is connected, the
//! server never sees the connection (a half-open connection of the classic kind).

use crate::{
    event::Tuple,
    host::{owners::Holder, sockdiag::DiagSocket},
};

/// Whether a listener's accept queue is full, as the kernel decides it (`sk_acceptq_is_full`:
/// more waiting than the backlog). For a listener, sock_diag's receive queue is the number of
/// connections waiting to be accepted and its send queue the backlog.
pub fn is_full(d: &DiagSocket) -> bool {
    d.recv_q > d.send_q
}

/// A listener whose accept queue is full.
#[derive(Clone, Debug, PartialEq)]
pub struct Overflow {
    /// Its address and port (the remote side is unspecified).
    pub tuple: Tuple,
    /// Its network namespace (0: unknown).
    pub netns: u32,
    /// The process holding it, if found.
    pub holder: Option<Holder>,
    /// Connections waiting to be accepted.
    pub queued: u32,
    /// The backlog `listen()` was given (as the kernel capped it).
    pub backlog: u32,
    /// Clients its namespace dropped (`ListenOverflows`) since the previous look there;
    /// `None` at the first look.
    pub dropped: Option<u64>,
    /// When tcp-trace first saw it full (monotonic ns).
    pub since_ns: u64,
}

impl Overflow {
    /// One line that says what is wrong.
    pub fn diagnosis(&self) -> String {
        let who = match &self.holder {
            Some(h) => format!("pid {} ({}) fd {}", h.pid, h.comm, h.fd),
            None => "its process (unknown)".to_string(),
        };
        let dropped = match self.dropped {
            Some(0) => "; no client dropped since the last look".to_string(),
            Some(n) => format!("; its namespace dropped {n} handshakes since the last look"),
            None => String::new(),
        };
        format!(
            "{who} is not accepting: {} connections wait (backlog {}), so the kernel drops \
             new clients' handshakes: they believe they are connected{dropped}",
            self.queued, self.backlog
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::TcpState, testkit};

    #[test]
    fn full_is_more_waiting_than_the_backlog() {
        let t = testkit::tuple("10.0.0.1", 8080, "0.0.0.0", 0);
        let mut d = DiagSocket::new(t, TcpState::LISTEN, 7);
        (d.recv_q, d.send_q) = (128, 128);
        assert!(!is_full(&d), "room for one more");
        d.recv_q = 129;
        assert!(is_full(&d));
        let o = Overflow {
            tuple: t,
            netns: 0,
            holder: None,
            queued: 129,
            backlog: 128,
            dropped: Some(57),
            since_ns: 0,
        };
        assert_eq!(
            o.diagnosis(),
            "its process (unknown) is not accepting: 129 connections wait (backlog 128), so the \
             kernel drops new clients' handshakes: they believe they are connected; its \
             namespace dropped 57 handshakes since the last look"
        );
    }
}
