//! cgroup v2 ids and paths. The kernel gives a socket's cgroup as an id (the inode number of the
//! cgroup's directory in the cgroup2 filesystem); people name cgroups by path, as
//! `/proc/PID/cgroup` prints them (`/system.slice/nginx.service`, `/kubepods/…/<container>`).
//! [`Resolver`] maps ids to paths; [`target`] turns `--cgroup` into what the kernel filter needs.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Where the cgroup2 filesystem is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid hosts), from `/proc/self/mountinfo`.
pub fn mount() -> Option<PathBuf> {
    let mounts = procfs::process::Process::myself().ok()?.mountinfo().ok()?;
    mounts
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
}

/// `--cgroup` resolved on this host: the kernel filter's id and level, and the path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The cgroup id (its directory's inode).
    pub id: u64,
    /// Depth below the root (`/` is 0, `/a/b` is 2).
    pub level: u32,
    /// The path as `/proc/PID/cgroup` writes it.
    pub path: String,
}

/// `arg` as a cgroup path relative to the cgroup2 root: a path under the mount point loses
/// that prefix; anything else is taken as already relative (`/system.slice/x.service`).
pub fn normalize(arg: &str, mount: Option<&Path>) -> String {
    let rel = mount
        .and_then(|m| Path::new(arg).strip_prefix(m).ok())
        .map(|p| format!("/{}", p.display()))
        .unwrap_or_else(|| format!("/{}", arg.trim_start_matches('/')));
    let trimmed = rel.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    }
}

/// Resolves `--cgroup` against this host's cgroup2 tree (it must exist here).
pub fn target(arg: &str) -> Result<Target> {
    let Some(root) = mount() else {
        bail!("--cgroup needs the cgroup v2 filesystem, which is not mounted here");
    };
    let path = normalize(arg, Some(&root));
    let dir = root.join(path.trim_start_matches('/'));
    let meta = std::fs::metadata(&dir)
        .with_context(|| format!("--cgroup {arg}: no cgroup {}", dir.display()))?;
    if !meta.is_dir() {
        bail!(
            "--cgroup {arg}: {} is not a cgroup directory",
            dir.display()
        );
    }
    let level = path.split('/').filter(|c| !c.is_empty()).count() as u32;
    Ok(Target {
        id: meta.ino(),
        level,
        path,
    })
}

/// What a cgroup path says of the container it belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container<'a> {
    /// The container's id: 64 hex digits, as `docker ps --no-trunc` and `crictl ps` print it.
    pub id: Option<&'a str>,
    /// The Kubernetes pod's uid (`metadata.uid`), with dashes.
    pub pod_uid: Option<String>,
}

/// Prefixes container runtimes give a container's scope or directory (systemd cgroup driver:
/// `docker-ID.scope`, `cri-containerd-ID.scope`, `crio-ID.scope`, `libpod-ID.scope`; the
/// cgroupfs driver: the bare id, or `crio-ID`). A `conmon` scope is the runtime's monitor,
/// not the container, and does not match: its id is not 64 hex digits.
const RUNTIME_PREFIXES: [&str; 5] = ["docker-", "cri-containerd-", "crio-", "libpod-", "nerdctl-"];

impl<'a> Container<'a> {
    /// From a cgroup v2 path (`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-
    /// pod<UID>.slice/cri-containerd-<ID>.scope`, `/docker/<ID>`, ...): the innermost
    /// component that names a container, and the pod around it.
    pub fn of(path: &'a str) -> Self {
        let mut c = Container::default();
        for part in path.split('/') {
            if let Some(id) = container_id(part) {
                c.id = Some(id);
            } else if let Some(uid) = pod_uid(part) {
                c.pod_uid = Some(uid);
            }
        }
        c
    }

    /// Neither a container nor a pod.
    pub fn is_none(&self) -> bool {
        self.id.is_none() && self.pod_uid.is_none()
    }
}

fn container_id(part: &str) -> Option<&str> {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    let id = RUNTIME_PREFIXES
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// `pod<UID>` (cgroupfs driver) or `kubepods[-QOS]-pod<UID_WITH_UNDERSCORES>.slice` (systemd).
/// A UID is a UUID, or for a static pod (kubeadm's apiserver, etcd) a 32-digit hash.
fn pod_uid(part: &str) -> Option<String> {
    let name = part.strip_suffix(".slice").unwrap_or(part);
    let uid = match name.strip_prefix("pod") {
        Some(uid) => uid,
        None if name.starts_with("kubepods-") => name.rsplit_once("-pod")?.1,
        None => return None,
    };
    let hex = |g: &str, n: usize| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit());
    let mut groups = uid.split(['-', '_']);
    let uuid = [8, 4, 4, 4, 12]
        .iter()
        .all(|&n| groups.next().is_some_and(|g| hex(g, n)))
        && groups.next().is_none();
    (uuid || hex(uid, 32)).then(|| uid.replace('_', "-"))
}

/// Maps cgroup ids to paths: from a recording's table, or by walking this host's cgroup2 tree
/// (again on a miss, at most once a second, since cgroups come and go). Ids only grow, so a
/// miss at or below the largest id seen is a cgroup already gone: no walk for it.
#[derive(Default)]
pub struct Resolver {
    root: Option<PathBuf>,
    /// Looked up once per event shown: a fast hasher for integer keys.
    paths: HashMap<u64, String, rustc_hash::FxBuildHasher>,
    scanned: Option<Instant>,
    largest: u64,
}

/// Never walk the tree more often than this.
const RESCAN: Duration = Duration::from_secs(1);

impl Resolver {
    /// Resolves against this host's cgroup2 tree.
    pub fn live() -> Self {
        Self {
            root: mount(),
            ..Self::default()
        }
    }

    /// Resolves only what it is told ([`Resolver::learn`]): a replay.
    pub fn fixed() -> Self {
        Self::default()
    }

    /// Adds one id → path pair.
    pub fn learn(&mut self, id: u64, path: String) {
        self.paths.insert(id, path);
    }

    /// The path of cgroup `id` (0: unknown).
    pub fn path(&mut self, id: u64) -> Option<&str> {
        if id == 0 {
            return None;
        }
        if !self.paths.contains_key(&id) && id > self.largest {
            self.rescan();
        }
        self.paths.get(&id).map(String::as_str)
    }

    fn rescan(&mut self) {
        let Some(root) = self.root.clone() else {
            return;
        };
        if self.scanned.is_some_and(|t| t.elapsed() < RESCAN) {
            return;
        }
        self.scanned = Some(Instant::now());
        let mut stack = vec![(root.clone(), String::from("/"))];
        while let Some((dir, path)) = stack.pop() {
            if let Ok(meta) = std::fs::symlink_metadata(&dir) {
                self.largest = self.largest.max(meta.ino());
                self.paths.insert(meta.ino(), path.clone());
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let child = if path == "/" {
                        format!("/{name}")
                    } else {
                        format!("{path}/{name}")
                    };
                    stack.push((e.path(), child));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_and_pod_uids_from_the_runtimes_paths() {
        let id = "4f1c0e0b5d4e8a2f9c3b7a6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f";
        let uid = "6f0e3a52-9b1d-4c7e-8a2f-1d3c5b7e9f00";
        let uid_ = uid.replace('-', "_");
        let cases = [
            // Docker: cgroupfs and systemd drivers.
            (format!("/docker/{id}"), Some(id), None),
            (format!("/system.slice/docker-{id}.scope"), Some(id), None),
            // Kubernetes with containerd, systemd driver.
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{id}.scope"),
                Some(id),
                Some(uid),
            ),
            // Guaranteed QoS (no QoS slice), CRI-O, systemd driver.
            (
                format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{id}.scope"),
                Some(id),
                Some(uid),
            ),
            // cgroupfs driver: containerd and CRI-O.
            (format!("/kubepods/besteffort/pod{uid}/{id}"), Some(id), Some(uid)),
            (format!("/kubepods/pod{uid}/crio-{id}"), Some(id), Some(uid)),
            // The pod's own cgroup (a socket of its sandbox), and CRI-O's monitor.
            (format!("/kubepods/burstable/pod{uid}"), None, Some(uid)),
            (
                format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-conmon-{id}.scope"),
                None,
                Some(uid),
            ),
            // Podman, and a systemd inside a container: the container is still named.
            (format!("/machine.slice/libpod-{id}.scope/container"), Some(id), None),
            (format!("/docker/{id}/system.slice/nginx.service"), Some(id), None),
            // A static pod's uid is a hash.
            (
                "/kubepods/burstable/pod0f9e8d7c6b5a49382716051423324150".into(),
                None,
                Some("0f9e8d7c6b5a49382716051423324150"),
            ),
            // Not containers.
            ("/system.slice/nginx.service".into(), None, None),
            ("/user.slice/user-0.slice/session-3.scope".into(), None, None),
            ("/kubepods.slice/kubepods-burstable.slice".into(), None, None),
            (format!("/docker/{}", &id[..63]), None, None),
            ("/".into(), None, None),
        ];
        for (path, want_id, want_uid) in cases {
            let c = Container::of(&path);
            assert_eq!((c.id, c.pod_uid.as_deref()), (want_id, want_uid), "{path}");
        }
    }

    #[test]
    fn paths_normalize_against_the_mount() {
        let m = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(normalize("/sys/fs/cgroup/unified/a/b/", Some(m)), "/a/b");
        assert_eq!(normalize("/sys/fs/cgroup/unified", Some(m)), "/");
        assert_eq!(
            normalize("/system.slice/x.service", Some(m)),
            "/system.slice/x.service"
        );
        assert_eq!(normalize("system.slice", None), "/system.slice");
    }

    #[test]
    fn resolver_walks_again_only_for_newer_ids() {
        let root = std::env::temp_dir().join(format!("tt-cgroup-test-{}", std::process::id()));
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
        let mut r = Resolver {
            root: Some(root.clone()),
            ..Resolver::default()
        };
        assert_eq!(r.path(ino("a/b")), Some("/a/b"));
        let first = r.scanned;
        // An id at or below the largest seen and not in the tree: gone, no walk.
        assert_eq!(r.path(1), None);
        assert_eq!(r.scanned, first);
        // A newer directory: found once the rate limit allows a walk.
        std::fs::create_dir(root.join("c")).unwrap();
        let c = ino("c");
        // cgroupfs ids grow; this stand-in filesystem's inode numbers need not.
        r.largest = r.largest.min(c - 1);
        r.scanned = None;
        assert_eq!(r.path(c), Some("/c"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn live_resolver_knows_the_root() {
        let Some(root) = mount() else {
            return;
        };
        let id = std::fs::metadata(&root).unwrap().ino();
        assert_eq!(Resolver::live().path(id), Some("/"));
        let t = target(root.to_str().unwrap()).unwrap();
        assert_eq!((t.id, t.level, t.path.as_str()), (id, 0, "/"));
    }
}
