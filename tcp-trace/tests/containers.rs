//! Containers: every event carries its socket's network namespace and cgroup, and `--netns` /
//! `--cgroup` keep only the sockets of one namespace or cgroup subtree, in the kernel (live) and
//! from the recorded names (replay). The namespaces and cgroups are created by each test and
//! removed even when it fails.

mod common;

use std::{
    net::{TcpListener, TcpStream},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::Command,
    time::Duration,
};

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

/// Stops a tracer and checks the kernel filtered: it delivered exactly the events shown.
fn stop_filtered_in_kernel(t: Tracer) {
    let (st, lines, err) = t.stop();
    assert!(st.success(), "{err:?}");
    let delivered = err
        .iter()
        .find_map(|l| {
            let n = l.split("delivered ").nth(1)?.split(' ').next()?;
            n.parse::<usize>().ok()
        })
        .unwrap_or_else(|| panic!("no delivery count in {err:?}"));
    // An `end` object is no kernel event: a timewait orphan's fate, from sock_diag.
    let events = lines
        .iter()
        .filter(|l| !l.starts_with("{\"type\":\"end\""))
        .count();
    assert_eq!(
        delivered, events,
        "the kernel should have dropped every other event: {err:?}"
    );
}

fn inode(path: &str) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .ino()
}

/// A loopback connection to `port`, accepted and closed on both sides, in the calling thread's
/// network namespace.
fn loopback_connection(port: u16) {
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (s, _) = l.accept().unwrap();
    drop(c);
    drop(s);
}

/// The client side of a connection to `port` reached CLOSE (its last state change).
fn client_closed(e: &Value, port: u16) -> bool {
    e["dport"] == port && e["new"] == "CLOSE"
}

#[test]
fn netns_filter_keeps_one_namespace_and_every_event_names_its_own() {
    let net = NetnsPair::new("nsf");
    let port = free_port();
    let ps = port.to_string();
    let ns_file = format!("/run/netns/{}", net.a);
    let ns_a = inode(&ns_file);
    let ns_root = inode("/proc/self/ns/net");
    let only_a = Tracer::start(&["watch", "--json", "--port", &ps, "--netns", &ns_file]);
    let by_number = Tracer::start(&[
        "watch",
        "--json",
        "--port",
        &ps,
        "--netns",
        &ns_a.to_string(),
    ]);
    let all = Tracer::start(&["watch", "--json", "--port", &ps]);
    let wide = Tracer::start(&["watch", "--wide", "--port", &ps]);

    // The same connection (same addresses and port) in the root namespace and in `a`.
    loopback_connection(port);
    in_netns(&net.a, move || loopback_connection(port));

    let both = all.wait_for("both namespaces' connections", WAIT, |ev| {
        ev.iter().filter(|e| client_closed(e, port)).count() >= 2
    });
    let netns_seen: std::collections::BTreeSet<u64> =
        both.iter().filter_map(|e| e["netns"].as_u64()).collect();
    assert_eq!(
        netns_seen,
        [ns_a, ns_root].into_iter().collect(),
        "unfiltered: each event carries its own namespace: {both:#?}"
    );
    assert!(both.iter().all(|e| e["netns"].is_u64()), "{both:#?}");

    for t in [&only_a, &by_number] {
        t.wait_for("namespace a's connection", WAIT, |ev| {
            ev.iter().any(|e| client_closed(e, port))
        });
        std::thread::sleep(Duration::from_millis(300));
        let ev: Vec<Value> = t.json();
        assert!(
            ev.iter().all(|e| e["netns"] == ns_a),
            "only namespace a: {ev:#?}"
        );
        // Both sockets of a's connection, every state change: client and server, open to close.
        let states = ev.iter().filter(|e| e["type"] == "state").count();
        assert!(states >= 8, "{states} state events: {ev:#?}");
    }
    all.stop();
    // Human output reads them too when asked (`--wide`): both namespaces in the NETNS column.
    let (_, lines, _) = wide.stop();
    for ns in [ns_a, ns_root] {
        let with = lines
            .iter()
            .filter(|l| l.contains(&format!(" {ns} ")))
            .count();
        assert!(with >= 5, "{with} lines in namespace {ns}: {lines:#?}");
    }
    for t in [only_a, by_number] {
        stop_filtered_in_kernel(t);
    }
}

#[test]
fn stuck_with_netns_lists_that_namespace_s_sockets() {
    let net = NetnsPair::new("nss");
    let port = free_port();
    let ps = port.to_string();
    let ns_file = format!("/run/netns/{}", net.a);
    let ns_a = inode(&ns_file);
    // A CLOSE_WAIT leak inside namespace a, made before the tracers start: only sock_diag,
    // queried inside the namespace, can list it.
    let peer = Peer::halfclose_in(&net.a, "127.0.0.1", port);
    let once = |extra: &[&str]| {
        let mut args = vec![
            "stuck",
            "--once",
            "--json",
            "--threshold",
            "0s",
            "--port",
            &ps,
        ];
        args.extend_from_slice(extra);
        let out = Command::new(bin()).args(&args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (out.status.code(), lines)
    };
    let (code, inside) = once(&["--netns", &ns_file]);
    let stuck: Vec<&Value> = inside.iter().filter(|e| e["type"] == "stuck").collect();
    assert_eq!(code, Some(1), "{inside:#?}");
    assert_eq!(stuck.len(), 2, "CLOSE_WAIT and FIN_WAIT2: {inside:#?}");
    let cw = stuck.iter().find(|e| e["state"] == "CLOSE_WAIT").unwrap();
    assert_eq!(cw["comm"], "tt-server", "{cw}");
    assert_eq!(cw["pid"], peer.server_pid, "{cw}");
    assert!(stuck.iter().all(|e| e["netns"] == ns_a), "{stuck:#?}");
    // --netns narrows: namespace b has none of them.
    let (code, in_b) = once(&["--netns", &format!("/run/netns/{}", net.b)]);
    assert_eq!(code, Some(0), "{in_b:#?}");
    assert!(in_b.iter().all(|e| e["type"] != "stuck"), "{in_b:#?}");
    drop(peer);
}

/// A cgroup v2 subtree made for one test, with these paths below it; removed on drop (after
/// its processes are gone).
struct TestCgroup {
    root: PathBuf,
    rel: String,
    subs: Vec<String>,
}

impl TestCgroup {
    fn new(tag: &str, subs: &[&str]) -> Self {
        let root =
            tcp_trace::host::cgroup::mount().expect("the cgroup filter tests need a cgroup2 mount");
        let rel = format!("/tt-{tag}-{}", std::process::id());
        let cg = Self {
            root,
            rel,
            subs: subs.iter().map(|s| s.to_string()).collect(),
        };
        for sub in subs {
            std::fs::create_dir_all(cg.dir(sub)).unwrap();
        }
        cg
    }

    fn dir(&self, sub: &str) -> PathBuf {
        self.root.join(format!("{}{sub}", &self.rel[1..]))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Every directory below the test's own, deepest first.
        let mut dirs: Vec<String> = self
            .subs
            .iter()
            .flat_map(|s| {
                let parts: Vec<&str> = s.split('/').filter(|p| !p.is_empty()).collect();
                (1..=parts.len()).map(move |n| format!("/{}", parts[..n].join("/")))
            })
            .collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
        dirs.dedup();
        dirs.push(String::new());
        for d in dirs {
            let _ = std::fs::remove_dir(self.dir(&d));
        }
    }
}

/// A process that joins cgroup `dir` and then connects to `port` and closes.
fn connect_from_cgroup(dir: &std::path::Path, port: u16) {
    let script = format!(
        "import os,socket,time\nopen('{}/cgroup.procs','w').write(str(os.getpid()))\ns=socket.create_connection(('127.0.0.1',{port}))\ntime.sleep(0.1)\ns.close()\ntime.sleep(0.2)",
        dir.display()
    );
    assert!(Command::new("python3")
        .args(["-c", &script])
        .status()
        .unwrap()
        .success());
}

#[test]
fn cgroup_filter_keeps_a_subtree_live_and_in_a_replay() {
    let cg = TestCgroup::new("cgf", &["/inner"]);
    let inner = format!("{}/inner", cg.rel);
    let inner_id = inode(cg.dir("/inner").to_str().unwrap());
    let port = free_port();
    let ps = port.to_string();
    let file = std::env::temp_dir().join(format!("tt-cg-{}.ttr", std::process::id()));
    let f = file.to_string_lossy().into_owned();
    // The parent (below it: the subtree), and the inner cgroup by its filesystem path.
    let subtree = Tracer::start(&["watch", "--json", "--port", &ps, "--cgroup", &cg.rel]);
    let inner_dir = cg.dir("/inner").to_string_lossy().into_owned();
    let exact = Tracer::start(&["watch", "--json", "--port", &ps, "--cgroup", &inner_dir]);
    let rec = Tracer::start(&["record", "-o", &f, "--port", &ps]);

    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    // From this test's own cgroup (not in the subtree), then from the inner cgroup.
    drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
    drop(listener.accept().unwrap());
    connect_from_cgroup(&cg.dir("/inner"), port);
    drop(listener.accept().unwrap());

    let mut live = Vec::new();
    for t in [&subtree, &exact] {
        t.wait_for("the inner cgroup's connection", WAIT, |ev| {
            ev.iter().any(|e| client_closed(e, port))
        });
        std::thread::sleep(Duration::from_millis(300));
        let ev: Vec<Value> = t.json();
        assert!(
            ev.iter()
                .all(|e| e["cgroup"] == inner.as_str() && e["cgroup_id"] == inner_id),
            "only the client socket made in {inner}: {ev:#?}"
        );
        // Its whole client lifecycle, and nothing of the accepted (server-side) sockets, which
        // belong to the listener's cgroup.
        let path: Vec<(String, String)> = ev
            .iter()
            .filter(|e| e["type"] == "state")
            .map(|e| (e["old"].to_string(), e["new"].to_string()))
            .collect();
        assert_eq!(
            path.first().map(|p| p.0.as_str()),
            Some("\"CLOSE\""),
            "{ev:#?}"
        );
        assert!(ev.iter().all(|e| e["dport"] == port), "{ev:#?}");
        live.push(ev);
    }
    // The kernel's events (a timewait orphan's `end` comes from sock_diag, at its own pace).
    let key = |v: &Vec<Value>| -> Vec<String> {
        v.iter()
            .filter(|e| e["type"] != "end")
            .map(|e| {
                let (t, s, o, n, c) = (&e["type"], &e["sock"], &e["old"], &e["new"], &e["cgroup"]);
                format!("{t} {s} {o} {n} {c}")
            })
            .collect()
    };
    assert_eq!(
        key(&live[0]),
        key(&live[1]),
        "subtree and exact filters saw the same"
    );
    let (st, _, err) = rec.stop();
    assert!(st.success(), "{err:?}");
    stop_filtered_in_kernel(subtree);
    stop_filtered_in_kernel(exact);

    // The replay names cgroups from the recording: the same events, by path, without the
    // kernel (and the unfiltered recording has the other connection too).
    let replayed = |extra: &[&str]| -> Vec<Value> {
        let mut args = vec!["watch", "--replay", &f, "--json"];
        args.extend_from_slice(extra);
        let out = Command::new(bin()).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let everything = replayed(&[]);
    assert!(
        everything.iter().any(|e| e["cgroup"] != inner.as_str()),
        "{everything:#?}"
    );
    let filtered = replayed(&["--cgroup", &cg.rel]);
    assert_eq!(key(&filtered), key(&live[0]));
    let _ = std::fs::remove_file(&file);
}

#[test]
fn unknown_cgroup_or_namespace_is_one_clear_line() {
    require_root();
    let out = Command::new(bin())
        .args([
            "watch",
            "--cgroup",
            "/tt-no-such-cgroup",
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--cgroup /tt-no-such-cgroup: no cgroup"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let out = Command::new(bin())
        .args(["watch", "--netns", "/tt/no/such/ns"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("neither a namespace inode nor a readable file"),
        "{err}"
    );
}

/// The cgroup shapes of Kubernetes (systemd driver with containerd and with CRI-O, cgroupfs
/// driver with containerd) and Docker (cgroupfs driver), made under this test's own cgroup
/// with a process in each: every output names the container and the pod its sockets belong
/// to.
#[test]
fn containers_and_pods_are_named_from_their_cgroup_paths() {
    let id = |hex: &str| hex.repeat(10) + &hex[..4];
    let uid = "6f0e3a52-9b1d-4c7e-8a2f-1d3c5b7e9f00";
    let uid_ = uid.replace('-', "_");
    // (cgroup, the leak's server address, container id, pod uid)
    let shapes: Vec<(String, &str, String, Option<&str>)> = vec![
        {
            let c = id("c0ffee");
            let path = format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/cri-containerd-{c}.scope"
            );
            (path, "127.0.0.1", c, Some(uid))
        },
        {
            let c = id("d0c4e2");
            (format!("/docker/{c}"), "127.0.0.2", c, None)
        },
        {
            let c = id("c210ab");
            let path = format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{c}.scope");
            (path, "127.0.0.3", c, Some(uid))
        },
        {
            let c = id("ab12cd");
            (
                format!("/kubepods/burstable/pod{uid}/{c}"),
                "127.0.0.4",
                c,
                Some(uid),
            )
        },
    ];
    let paths: Vec<&str> = shapes.iter().map(|s| s.0.as_str()).collect();
    let cg = TestCgroup::new("ctr", &paths);
    let port = free_port();
    let ps = port.to_string();
    let watch = Tracer::start(&["watch", "--json", "--port", &ps]);
    let wide = Tracer::start(&["watch", "--wide", "--port", &ps]);
    // Live, so that the orphans (timewait sockets: no cgroup in sock_diag, no process) keep
    // the place the events gave them.
    let stuck = Tracer::stuck("500ms", port);
    let _leaks: Vec<Leak> = shapes
        .iter()
        .map(|(path, addr, _, _)| Leak::start(&cg.dir(path), addr, port))
        .collect();
    // A shape's sockets are those with its server address at either end (every client's
    // source address is 127.0.0.1, the first shape's): (container, pod uid or null).
    let want = |e: &Value| {
        let (_, _, ctr, pod) = shapes
            .iter()
            .rev()
            .find(|(_, addr, _, _)| e["saddr"] == *addr || e["daddr"] == *addr)
            .unwrap_or_else(|| panic!("a socket of no shape: {e}"));
        (ctr.as_str(), pod.map_or(Value::Null, Value::from))
    };
    let n = shapes.len();
    let ev = watch.wait_for("every leak's CLOSE_WAIT", WAIT, |ev| {
        ev.iter().filter(|e| e["new"] == "CLOSE_WAIT").count() >= n
    });
    for e in ev.iter().filter(|e| e["type"] == "state") {
        let (ctr, pod) = want(e);
        assert_eq!(e["container_id"], ctr, "{e}");
        assert_eq!(e.get("pod_uid").cloned().unwrap_or(Value::Null), pod, "{e}");
    }
    let ev = stuck.wait_for("a CLOSE_WAIT and an orphan each", WAIT, |ev| {
        ev.iter().filter(|e| e["type"] == "stuck").count() >= 2 * n
    });
    let stuck: Vec<&Value> = ev.iter().filter(|e| e["type"] == "stuck").collect();
    assert_eq!(
        stuck.len(),
        2 * n,
        "a CLOSE_WAIT and an orphan each: {stuck:#?}"
    );
    for s in stuck {
        let (ctr, pod) = want(s);
        assert_eq!(s["container_id"], ctr, "{s}");
        assert_eq!(s.get("pod_uid").cloned().unwrap_or(Value::Null), pod, "{s}");
    }
    watch.stop();
    // Human --wide: the short ids `docker ps` and `crictl ps` print, and the pod.
    let (_, lines, _) = wide.stop();
    for (_, addr, ctr, pod) in &shapes {
        let cell = match pod {
            Some(uid) => format!("ctr {} pod {uid}", &ctr[..12]),
            None => format!("ctr {}", &ctr[..12]),
        };
        assert!(
            lines.iter().any(|l| l.contains("-> CLOSE_WAIT")
                && l.split_whitespace()
                    .nth(3)
                    .is_some_and(|local| local.starts_with(&format!("{addr}:")))
                && l.contains(cell.as_str())),
            "{cell}: {lines:#?}"
        );
    }
}

/// A loopback connection inside namespace `ns` from local port `from` to `port`: the client
/// shuts its side down, the server never closes (CLOSE_WAIT, and a held FIN_WAIT2).
fn half_closed_in(ns: &str, port: u16, from: u16) -> (TcpStream, TcpStream) {
    use std::os::fd::FromRawFd;
    in_netns(ns, move || {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        // SAFETY: a new socket, bound and connected here, then owned by the TcpStream.
        let client = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let one: i32 = 1;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&raw const one).cast(),
                4,
            );
            let at = |p: u16| libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: p.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
                },
                sin_zero: [0; 8],
            };
            let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
            let (local, remote) = (at(from), at(port));
            assert_eq!(libc::bind(fd, (&raw const local).cast(), len), 0);
            assert_eq!(libc::connect(fd, (&raw const remote).cast(), len), 0);
            TcpStream::from_raw_fd(fd)
        };
        let (server, _) = listener.accept().unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        (client, server)
    })
}

/// Two pods with the same loopback connection (the same four endpoints, in two network
/// namespaces), both leaking CLOSE_WAIT: two sockets, each with its own story (seen from its
/// birth, its state's exact age), however the engine finds them by endpoints.
#[test]
fn the_same_endpoints_in_two_namespaces_are_two_stories() {
    let net = NetnsPair::new("twin");
    let (port, from) = (free_port(), free_port());
    let tracer = Tracer::stuck("1s", port);
    let _a = half_closed_in(&net.a, port, from);
    let _b = half_closed_in(&net.b, port, from);
    let leaks = |ev: &[Value]| -> Vec<Value> {
        ev.iter()
            .filter(|e| e["type"] == "stuck" && e["state"] == "CLOSE_WAIT")
            .cloned()
            .collect()
    };
    let ev = tracer.wait_for("both CLOSE_WAIT", slow(WAIT), |ev| leaks(ev).len() >= 2);
    let cw = leaks(&ev);
    let namespaces: std::collections::BTreeSet<u64> =
        cw.iter().map(|e| e["netns"].as_u64().unwrap()).collect();
    let want: std::collections::BTreeSet<u64> = [&net.a, &net.b]
        .iter()
        .map(|ns| inode(&format!("/run/netns/{ns}")))
        .collect();
    assert_eq!(namespaces, want, "{cw:#?}");
    for e in &cw {
        assert_eq!(
            (&e["sport"], &e["dport"]),
            (&port.into(), &from.into()),
            "{e}"
        );
        assert_eq!(e["age_exact"], true, "seen from its birth: {e}");
        assert_eq!(e["pid"], std::process::id(), "{e}");
    }
    tracer.stop();
}
