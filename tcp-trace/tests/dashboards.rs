//! `deploy/grafana/tcp-trace.json` and `deploy/prometheus/alerts.yml` against the real thing:
//! promtool checks the rules and runs their unit tests (`alerts_test.yml`); then a real
//! Prometheus scrapes a real `tcp-trace serve` every second while the test makes traffic on
//! loopback (half-closes, a refused connect, clean connections, an abortive close, a leak in a
//! container-shaped cgroup, a listener whose accept queue is full and a connect it drops), and
//! every query of every panel of the dashboard must answer with data, the alerts that scenario
//! should raise must be pending, and no other.
//!
//! promtool and prometheus come with Debian's `prometheus` package (`cargo xtask test`
//! installs it). Without them the tests print a notice and pass, except under `CI=true`,
//! where they fail.

mod common;

use std::{
    collections::BTreeSet,
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");

/// Panels that may show no data, or only zeros, after the scenario, and why. Every other
/// panel must return at least one series, and at least one non-zero value.
const QUIET: &[(&str, &str)] = &[
    (
        "Lost events in the time range",
        "the scenario loses no events: a few hundred in a 4 MiB ring buffer",
    ),
    (
        "Lost events and evictions",
        "as above, and nothing is evicted: hundreds of sockets tracked, --max-sockets is 1000000",
    ),
];

/// The alerts the scenario must make pending (every one has a `for` longer than the test).
const PENDING: [&str; 4] = [
    "TcpTraceCloseWaitLeak",
    "TcpTraceFinWait2Held",
    "TcpTraceHalfOpenConnections",
    "TcpTraceListenerOverflow",
];

fn deploy(path: &str) -> PathBuf {
    Path::new(DEPLOY)
        .join(path)
        .canonicalize()
        .unwrap_or_else(|e| panic!("{DEPLOY}/{path}: {e}"))
}

/// `name` on `PATH`. When missing: a failure under `CI=true`, otherwise a notice and `None`.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    });
    if found.is_none() {
        let msg = format!(
            "{name} is not installed: it comes with Debian's `prometheus` package \
             (apt-get install -y prometheus; `cargo xtask test` installs it)"
        );
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{msg}; under CI=true this test fails instead of skipping");
        }
        eprintln!("skipped: {msg}");
    }
    found
}

/// Runs a command; its output, or a failure showing it.
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let rules = deploy("prometheus/alerts.yml");
    let out = run_ok(
        Command::new(&promtool)
            .arg("check")
            .arg("rules")
            .arg(&rules),
    );
    let n = alert_rules().len();
    assert!(
        out.contains(&format!("SUCCESS: {n} rules found")),
        "{n} rules expected:\n{out}"
    );
    let tests = deploy("prometheus/alerts_test.yml");
    let out = run_ok(Command::new(&promtool).arg("test").arg("rules").arg(&tests));
    assert!(out.contains("SUCCESS"), "{out}");
    eprintln!("promtool: {n} rules checked; their unit tests pass");
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        all.push(p);
        if let Some(inner) = p["panels"].as_array() {
            all.extend(inner);
        }
    }
    all
}

/// (panel title, refId, expr) of every query of every panel.
fn queries(dash: &Value) -> Vec<(String, String, String)> {
    panels(dash)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            p["targets"].as_array().into_iter().flatten().map(move |t| {
                (
                    title.clone(),
                    t["refId"].as_str().unwrap_or_default().to_string(),
                    t["expr"].as_str().unwrap_or_default().to_string(),
                )
            })
        })
        .collect()
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(deploy("grafana/tcp-trace.json")).unwrap();
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every `tcp_trace_*` metric name in a PromQL expression, each with its label matchers
/// (`None` when it has none).
fn selectors(expr: &str) -> Vec<(String, Option<String>)> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("tcp_trace_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_string();
        let after = &tail[end..];
        let matchers = after
            .strip_prefix('{')
            .and_then(|m| m.split_once('}'))
            .map(|(m, _)| m.to_string());
        found.push((name, matchers));
        rest = &tail[end..];
    }
    found
}

/// The rules of alerts.yml, as YAML.
fn alert_rules() -> Vec<yaml_rust2::Yaml> {
    let text = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let doc = &yaml_rust2::YamlLoader::load_from_str(&text).unwrap()[0];
    doc["groups"]
        .as_vec()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_vec().expect("rules").clone())
        .collect()
}

/// The dashboard's shape (variables, data source, the instance filter on every selector) and
/// the rules' (severity, actionable annotations, a unit test firing and one not firing for
/// each): no tools needed.
#[test]
fn dashboard_and_rules_are_well_formed() {
    let d = dashboard();
    assert_eq!(d["uid"], "tcp-trace");
    let schema = d["schemaVersion"].as_u64().unwrap();
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    let vars = d["templating"]["list"].as_array().unwrap();
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    let instance = var("instance");
    assert_eq!(instance["type"], "query");
    assert_eq!(instance["datasource"]["uid"], "${datasource}");
    assert_eq!(
        instance["query"]["query"],
        "label_values(tcp_trace_tracked_sockets, instance)"
    );
    assert_eq!(instance["allValue"], ".*");
    let (mut ids, mut titles) = (BTreeSet::new(), BTreeSet::new());
    for p in panels(&d) {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id: {p}");
        assert!(
            titles.insert(p["title"].as_str().unwrap()),
            "duplicate title: {p}"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "no gridPos: {p}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
    for (quiet, _) in QUIET {
        assert!(titles.contains(quiet), "QUIET names no panel: {quiet}");
    }
    let qs = queries(&d);
    for (title, refid, expr) in &qs {
        let sel = selectors(expr);
        assert!(!sel.is_empty(), "{title}/{refid} reads no tcp_trace metric");
        for (name, matchers) in sel {
            assert!(
                matchers.is_some_and(|m| m.contains(r#"instance=~"$instance""#)),
                "{title}/{refid}: {name} is not filtered by instance=~\"$instance\": {expr}"
            );
        }
    }

    let rules = alert_rules();
    let tests = std::fs::read_to_string(deploy("prometheus/alerts_test.yml")).unwrap();
    let tests = &yaml_rust2::YamlLoader::load_from_str(&tests).unwrap()[0];
    let cases: Vec<&yaml_rust2::Yaml> = tests["tests"]
        .as_vec()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_vec().unwrap())
        .collect();
    for r in &rules {
        let name = r["alert"].as_str().expect("alerting rules only");
        let severity = r["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["warning", "critical"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        let summary = r["annotations"]["summary"].as_str().unwrap_or_default();
        let description = r["annotations"]["description"].as_str().unwrap_or_default();
        assert!(summary.contains("{{ $labels.instance }}"), "{name}");
        assert!(
            description.contains("`tcp-trace stuck --once`") && description.contains("host"),
            "{name}: the description must say what to run on the host"
        );
        let expr = r["expr"].as_str().unwrap();
        assert!(expr.contains("tcp_trace_"), "{name}: {expr}");
        let (firing, quiet) = cases
            .iter()
            .filter(|c| c["alertname"].as_str() == Some(name))
            .fold((0, 0), |(f, q), c| match c["exp_alerts"].as_vec() {
                Some(v) if !v.is_empty() => (f + 1, q),
                _ => (f, q + 1),
            });
        assert!(
            firing > 0 && quiet > 0,
            "{name}: {firing} firing and {quiet} not-firing cases in alerts_test.yml"
        );
    }
    eprintln!(
        "dashboard: {} panels, {} queries; {} alert rules",
        panels(&d).iter().filter(|p| p["type"] != "row").count(),
        qs.len(),
        rules.len()
    );
}

/// Percent-encoding for a URL query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls `f` until it gives a value, every 100 ms, for `slow(timeout)`; panics with `what` and
/// the last state `f` reported.
fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if start.elapsed() > slow(timeout) => {
                panic!("timed out waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A real Prometheus on loopback scraping one target every second with alerts.yml loaded;
/// killed on drop (its log shown when the test failed).
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(bin: &Path, target: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: tcp-trace\n    static_configs:\n      - targets: [\"127.0.0.1:{target}\"]\n",
                deploy("prometheus/alerts.yml").display()
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut p = Self { child, port, dir };
        wait_until("Prometheus to be ready", Duration::from_secs(30), || {
            if let Ok(Some(st)) = p.child.try_wait() {
                panic!("prometheus exited ({st}):\n{}", p.log());
            }
            match http_get(p.port, "/-/ready") {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An API call's `data` (panics on a transport error; an API error is `Err`).
    fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) =
            http_get(self.port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path}: HTTP {status}, not JSON ({e}): {body}"));
        match v["status"].as_str() {
            Some("success") => Ok(v["data"].clone()),
            _ => Err(format!(
                "HTTP {status}: {} {}",
                v["errorType"].as_str().unwrap_or_default(),
                v["error"].as_str().unwrap_or_default()
            )),
        }
    }

    /// An instant query's samples: (labels, value).
    fn query(&self, expr: &str) -> Result<Vec<(Value, f64)>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(expr)))?;
        let value = |v: &Value| {
            v[1].as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN)
        };
        Ok(match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| (s["metric"].clone(), value(&s["value"])))
                .collect(),
            Some("scalar") => vec![(Value::Null, value(&data["result"]))],
            other => return Err(format!("unexpected result type {other:?}: {data}")),
        })
    }

    /// Alert names by state ("pending", "firing").
    fn alerts(&self) -> Vec<(String, String)> {
        let data = self.api("/api/v1/alerts").unwrap();
        let mut v: Vec<(String, String)> = data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap().to_string(),
                    a["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "prometheus log (last lines):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

/// A cgroup v2 directory shaped like a Docker container's (`/tt-dash-PID/docker/ID`), made
/// under the cgroup2 root and removed on drop (after its process is gone).
struct ContainerCgroup {
    base: PathBuf,
    id: String,
}

impl ContainerCgroup {
    fn new() -> Self {
        let root = tcp_trace::host::cgroup::mount().expect("a cgroup2 mount");
        let base = root.join(format!("tt-dash-{}", std::process::id()));
        let id = "da5b0a4d".repeat(8);
        std::fs::create_dir_all(base.join("docker").join(&id)).unwrap();
        Self { base, id }
    }

    fn dir(&self) -> PathBuf {
        self.base.join("docker").join(&self.id)
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.dir());
        let _ = std::fs::remove_dir(self.base.join("docker"));
        let _ = std::fs::remove_dir(&self.base);
    }
}

/// Waits until `serve`'s own /metrics satisfies `pred`.
fn wait_metrics(http: u16, what: &str, pred: impl Fn(&str) -> bool) {
    wait_until(what, Duration::from_secs(15), || {
        let (_, body) = http_get(http, "/metrics").map_err(|e| e.to_string())?;
        match pred(&body) {
            true => Ok(()),
            false => Err(body),
        }
    });
}

/// Grafana's variables as the test substitutes them: every instance, and windows of `window`
/// (long enough to hold the whole scenario).
fn substitute(expr: &str, window: &str) -> String {
    let e = expr
        .replace("$__rate_interval", window)
        .replace("$__interval", window)
        .replace("$__range", window)
        .replace("$instance", ".*");
    let unknown = e
        .match_indices('$')
        .any(|(i, _)| e[i + 1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'));
    assert!(!unknown, "a variable the test does not know: {expr}");
    e
}

#[test]
fn every_panel_answers_from_a_real_prometheus_scraping_serve() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let t0 = Instant::now();
    let port = free_port();
    let http = free_port();
    let ps = port.to_string();
    let listen = format!("127.0.0.1:{http}");
    let tracer = Tracer::start(&[
        "serve",
        "--listen",
        &listen,
        "--port",
        &ps,
        "--threshold",
        "1s",
        "--interval",
        "300ms",
        "--half-open-retransmits",
        "1",
        "--half-open-after",
        "1s",
        "--label-ports",
    ]);
    let prom = Prometheus::start(&prometheus, http);
    wait_until(
        "the tcp-trace target to be up",
        Duration::from_secs(20),
        || match prom.query(r#"up{job="tcp-trace"}"#)?.first() {
            Some((_, v)) if *v == 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    let stuck = |state: &str| format!(r#"tcp_trace_stuck_sockets{{state="{state}"}}"#);
    // rate() counts only increments after a series' first sample. These series exist from
    // serve's start, at 0, so even their first increment counts; everything below still
    // happens twice, the second round once Prometheus has scraped each of these above 0 (as
    // an event that recurs would in production; an errno `serve` does not name, or a port,
    // is still born with its first increment).
    let first_round = [
        r#"tcp_trace_half_closed_seconds_count{state="CLOSE_WAIT"}"#,
        r#"tcp_trace_connection_closes_total{cause="refused"}"#,
        r#"tcp_trace_connection_closes_total{cause="peer_reset"}"#,
        r#"tcp_trace_connection_closes_total{cause="local_abort"}"#,
        r#"tcp_trace_socket_errors_total{error="ECONNREFUSED"}"#,
        r#"tcp_trace_socket_errors_total{error="ECONNRESET"}"#,
    ];
    for round in 1..=2 {
        // A half-close that is reported stuck, then recovers when the server closes.
        let a = Peer::halfclose("127.0.0.1", port);
        wait_metrics(http, "a half-close stuck", |m| {
            sample(m, &stuck("CLOSE_WAIT")) == 1.0
        });
        Peer::close(a.server_pid);
        wait_metrics(http, "its recovery", |m| {
            sample(
                m,
                r#"tcp_trace_half_closed_seconds_count{state="CLOSE_WAIT"}"#,
            ) == f64::from(round)
        });
        drop(a);
        // A refused connect (nothing listens on the port now): resets, ECONNREFUSED.
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
        // Clean connections.
        clean_connections(port, 3);
        // An abortive close: a reset each way, ECONNRESET.
        {
            let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
            let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let (mut s, _) = l.accept().unwrap();
            abort_on_close(&c);
            drop(c);
            let mut b = [0u8; 1];
            assert!(s.read(&mut b).is_err(), "the server reads the reset");
        }
        if round == 1 {
            for series in first_round {
                wait_until(
                    &format!("Prometheus to scrape {series} above 0"),
                    Duration::from_secs(15),
                    || match prom.query(series) {
                        Ok(v) if v.iter().any(|(_, x)| *x > 0.0) => Ok(()),
                        other => Err(format!("{other:?}")),
                    },
                );
            }
        }
    }
    // A half-close that stays stuck (CLOSE_WAIT and a held FIN_WAIT2) for a few scrapes...
    let _b = Peer::halfclose("127.0.0.1", port);
    wait_metrics(http, "the lasting half-close stuck", |m| {
        sample(m, &stuck("CLOSE_WAIT")) == 1.0 && sample(m, &stuck("FIN_WAIT2")) == 1.0
    });
    std::thread::sleep(slow(Duration::from_secs(3)));
    // ...then one more CLOSE_WAIT, in a container: the leak grows.
    let cgroup = ContainerCgroup::new();
    let _leak = Leak::start(&cgroup.dir(), "127.0.0.1", port);
    let in_container = format!(
        r#"tcp_trace_stuck_sockets_by_container{{container_id="{}",pod_uid=""}}"#,
        cgroup.id
    );
    wait_metrics(http, "the container's CLOSE_WAIT stuck", |m| {
        sample(m, &stuck("CLOSE_WAIT")) == 2.0
            && try_sample(m, &in_container).is_some_and(|n| n >= 1.0)
    });
    // A listener with backlog 1 that never accepts: two clients fill its queue, the third's
    // SYNs are dropped (a connect into a black hole, retransmitting).
    let full = TcpListener::bind(("127.0.0.1", port)).unwrap();
    // SAFETY: listen() again on a listening socket only sets its backlog.
    assert_eq!(unsafe { libc::listen(full.as_raw_fd(), 1) }, 0);
    let queued: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Not joined: it ends when `full` is dropped (its next SYN is refused) or times out.
    std::thread::spawn(move || TcpStream::connect_timeout(&addr, Duration::from_secs(120)));
    wait_metrics(http, "the full listener and the dropped connect", |m| {
        sample(m, "tcp_trace_full_listeners") == 1.0
            && sample(
                m,
                r#"tcp_trace_half_open_sockets{kind="connect_blackhole"}"#,
            ) >= 1.0
    });

    // Prometheus saw all that once the alerts it implies are pending. The lost-events alert
    // may fire only when the tracer counted a loss, which the kernel's skipped runs can cause
    // (it runs no program of a tracepoint hit while another BPF program runs on that CPU, as
    // the other tests' tracers make likelier).
    let want: Vec<(String, String)> = PENDING
        .iter()
        .map(|a| (a.to_string(), "pending".to_string()))
        .collect();
    wait_until(
        "exactly the scenario's alerts pending",
        Duration::from_secs(30),
        || {
            let (_, body) = http_get(http, "/metrics").map_err(|e| e.to_string())?;
            let lost = sample(&body, "tcp_trace_lost_events_total");
            // (Prometheus may not see a loss made before its first scrape as an increase.)
            let mut got = prom.alerts();
            if lost > 0.0 {
                got.retain(|a| a != &("TcpTraceLostEvents".into(), "firing".into()));
            }
            match got {
                got if got == want => Ok(()),
                got => Err(format!("{got:?} (tcp-trace lost {lost} events)")),
            }
        },
    );
    let scenario = t0.elapsed();
    // 30 s here; longer in the VM runner's emulated CPU.
    let window = format!("{}s", (scenario.as_secs() + 10).max(30));

    // Every query of every panel, as Grafana would send it.
    let d = dashboard();
    let qs = queries(&d);
    let mut failures = Vec::new();
    let mut answered = BTreeSet::new();
    for (title, refid, expr) in &qs {
        let quiet = QUIET.iter().any(|(t, _)| t == title);
        match prom.query(&substitute(expr, &window)) {
            Err(e) => failures.push(format!("{title}/{refid}: query error {e}: {expr}")),
            Ok(samples) if samples.is_empty() && !quiet => {
                failures.push(format!("{title}/{refid}: no data: {expr}"))
            }
            Ok(samples) => {
                let shown: Vec<String> = samples
                    .iter()
                    .map(|(m, v)| {
                        let labels = m.as_object().map_or(String::new(), |o| {
                            o.iter()
                                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                                .collect::<Vec<_>>()
                                .join(",")
                        });
                        format!("{{{labels}}} {v}")
                    })
                    .collect();
                eprintln!("{title}/{refid}: {}", shown.join("; "));
                if samples.iter().any(|(_, v)| v.is_finite() && *v != 0.0) {
                    answered.insert(title.clone());
                }
            }
        }
    }
    for p in panels(&d).into_iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap().to_string();
        let quiet = QUIET.iter().any(|(t, _)| *t == title);
        if !quiet && !answered.contains(&title) {
            failures.push(format!("{title}: only zeros or NaN after the scenario"));
        }
    }
    // The instance variable's query lists this serve.
    let instances = prom
        .api("/api/v1/label/instance/values?match[]=tcp_trace_tracked_sockets")
        .unwrap();
    assert_eq!(instances, serde_json::json!([listen]), "$instance values");
    // Every metric the dashboard and the rules read is one serve exports.
    let names = prom.api("/api/v1/label/__name__/values").unwrap();
    let names: BTreeSet<&str> = names
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let rules = alert_rules();
    let exprs = qs.iter().map(|(_, _, e)| e.clone()).chain(
        rules
            .iter()
            .map(|r| r["expr"].as_str().unwrap().to_string()),
    );
    for e in exprs {
        for (name, _) in selectors(&e) {
            if !names.contains(name.as_str()) {
                failures.push(format!("{name} is not a metric serve exports: {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "{} panels, {} queries answered by Prometheus over {window} windows ({} allowed quiet); \
         alerts pending: {}; \
         scenario {:.1} s, queries checked at {:.1} s",
        panels(&d).iter().filter(|p| p["type"] != "row").count(),
        qs.len(),
        QUIET.len(),
        PENDING.join(", "),
        scenario.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    drop(queued);
    drop(full);
    drop(prom);
    let (st, _, err) = tracer.stop();
    assert!(st.success(), "{err:?}");
}
