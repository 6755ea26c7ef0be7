//! errno names, for socket errors.

use std::borrow::Cow;

/// The errno name for a positive errno (`ETIMEDOUT`), `UNKNOWN(n)` otherwise.
pub fn errno_name(errno: i32) -> Cow<'static, str> {
    let name = match errno {
        // An error the application read before the kernel's tracepoint could.
        0 => "READ_FIRST",
        1 => "EPERM",
        4 => "EINTR",
        5 => "EIO",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        22 => "EINVAL",
        32 => "EPIPE",
        71 => "EPROTO",
        90 => "EMSGSIZE",
        97 => "EAFNOSUPPORT",
        98 => "EADDRINUSE",
        99 => "EADDRNOTAVAIL",
        100 => "ENETDOWN",
        101 => "ENETUNREACH",
        102 => "ENETRESET",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        105 => "ENOBUFS",
        107 => "ENOTCONN",
        108 => "ESHUTDOWN",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        112 => "EHOSTDOWN",
        113 => "EHOSTUNREACH",
        _ => return Cow::Owned(format!("UNKNOWN({errno})")),
    };
    Cow::Borrowed(name)
}
