//! Output: one human line or one NDJSON object per item, one file per command's format.
//!
//! A closed pipe (`| head`) is not an error for the user: [`is_broken_pipe`] lets the caller
//! stop quietly with status 0.

pub mod halfopen;
pub mod json;
pub mod life;
pub mod metrics;
pub mod report;
pub mod stuck;
pub mod watch;

use std::{cell::RefCell, io, rc::Rc, time::Duration};

use crate::{event::Owner, host::cgroup::Container};

/// One output written by more than one sink (`serve`'s `watch` and `stuck`), or written by
/// one and read back by another (`report` reads what its `stuck` wrote).
pub struct Shared<W = Box<dyn io::Write>>(pub Rc<RefCell<W>>);

impl<W> Clone for Shared<W> {
    fn clone(&self) -> Self {
        Self(Rc::clone(&self.0))
    }
}

impl<W: io::Write> io::Write for Shared<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

/// True when an error (anywhere in its chain) is EPIPE.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Seconds with millisecond precision, as the JSON objects give durations.
pub fn secs(d: Duration) -> f64 {
    d.as_millis() as f64 / 1000.0
}

/// The PID and COMM cells of a human line (`-` when the owner is unknown).
pub fn owner_cells(o: Option<Owner>) -> (String, String) {
    o.map_or(("-".into(), "-".into()), |o| {
        (o.pid.to_string(), o.comm.escaped())
    })
}

/// `ctr 4f1c0e0b5d4e pod 6f0e…` for a cgroup path that names a container or pod (human
/// `--wide`: the short id `docker ps` and `crictl ps` print), else `None`.
pub fn container_text(cgroup: Option<&str>) -> Option<String> {
    let c = Container::of(cgroup?);
    let mut parts = Vec::new();
    if let Some(id) = c.id {
        parts.push(format!("ctr {}", &id[..12]));
    }
    if let Some(uid) = c.pod_uid {
        parts.push(format!("pod {uid}"));
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}
