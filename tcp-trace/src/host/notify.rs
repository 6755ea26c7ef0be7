//! systemd's readiness protocol (`sd_notify`): when `$NOTIFY_SOCKET` is set (a unit with
//! `Type=notify`, or the integration tests), tcp-trace sends `READY=1` once its programs are
//! attached and its command has taken its start-up snapshot: from then on nothing is missed.

use std::{
    ffi::OsStr,
    io,
    os::unix::{
        ffi::OsStrExt,
        net::{SocketAddr, UnixDatagram},
    },
};

/// Says `READY=1` to `$NOTIFY_SOCKET`, if there is one; a failure is one warning.
pub fn ready() {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(e) = send(&path, b"READY=1") {
            log::warn!("NOTIFY_SOCKET {}: {e}", path.to_string_lossy());
        }
    }
}

/// A datagram to a socket path, or to an abstract socket (`@name`).
fn send(path: &OsStr, msg: &[u8]) -> io::Result<()> {
    let addr = match path.as_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    UnixDatagram::unbound()?.send_to_addr(msg, &addr)?;
    Ok(())
}
