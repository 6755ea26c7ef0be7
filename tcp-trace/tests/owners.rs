//! `life` and `report` name the process that holds an accepted connection, as `stuck` does:
//! a Python server (comm tt-leaker) accepts connections whose clients send a few bytes and
//! close, never reads or closes them (a CLOSE_WAIT leak), and is killed, which ends each with
//! a reset (`CLOSE_WAIT → CLOSE`, data unread). No transition of those sockets runs in their
//! owner's context (they are born in softirq; a close with data unread goes to CLOSE directly),
//! so only the host (sock_diag and `/proc`, or a recording's snapshots) names their holder.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::*;
use serde_json::Value;

/// The leaking server: accepts `n` connections on loopback `port` and holds them, reading
/// nothing, until killed; killed on drop.
struct Leaker {
    child: Child,
    pid: u32,
}

impl Leaker {
    const COMM: &str = "tt-leaker";

    fn start(port: u16, n: usize) -> Self {
        let script = format!(
            "import ctypes,os,socket,time\n\
             ctypes.CDLL(None).prctl(15,b'{comm}',0,0,0)\n\
             l=socket.socket(); l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             l.bind(('127.0.0.1',{port})); l.listen(1024)\n\
             print('ready',os.getpid(),flush=True)\n\
             held=[l.accept()[0] for _ in range({n})]\n\
             print('accepted',flush=True)\n\
             time.sleep(600)",
            comm = Self::COMM
        );
        let mut child = Command::new("python3")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let pid = match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["ready", pid] => pid.parse().unwrap(),
            _ => panic!("leaker said {line:?}"),
        };
        // The clients: a few bytes each (never read), then their close.
        for _ in 0..n {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            c.write_all(b"never read").unwrap();
        }
        line.clear();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "accepted");
        Self { child, pid }
    }

    /// Killed: its sockets end with a reset each.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Leaker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const N: usize = 20;

/// The `life` objects of the server's side (local port `port`).
fn server_sides(v: &[Value], port: u16) -> Vec<Value> {
    v.iter()
        .filter(|o| o["type"] == "life" && o["sport"] == port)
        .cloned()
        .collect()
}

fn assert_named(lives: &[Value], pid: u32) {
    assert_eq!(lives.len(), N, "{lives:#?}");
    for l in lives {
        assert_eq!(
            (l["pid"].as_u64(), l["comm"].as_str()),
            (Some(pid.into()), Some(Leaker::COMM)),
            "the holder is not named: {l}"
        );
        // The leak: the peer's FIN, then the reset of a close with data unread.
        assert_eq!(l["cause"], "local_abort", "{l}");
        let last = l["states"].as_array().unwrap().last().unwrap();
        assert_eq!(last["state"], "CLOSE_WAIT", "{l}");
    }
}

/// Live: the server's side of every leaked connection, in JSON and in human lines, names the
/// process that held it, though that process never made one of its transitions.
#[test]
fn life_names_the_holder_of_accepted_connections() {
    let port = free_port();
    let ps = port.to_string();
    let json = Tracer::start(&["life", "--json", "--port", &ps]);
    let human = Tracer::start(&["life", "--port", &ps]);
    let leaker = Leaker::start(port, N);
    let pid = leaker.pid;
    // Open long enough to be looked up (a connection older than 1 s, once a second).
    std::thread::sleep(slow(Duration::from_secs(3)));
    leaker.kill();
    json.wait_for("the server's sides", Duration::from_secs(10), |v| {
        server_sides(v, port).len() >= N
    });
    let (st, out, err) = json.stop();
    assert!(st.success(), "{err:?}");
    let v: Vec<Value> = out
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_named(&server_sides(&v, port), pid);
    let (st, out, err) = human.stop();
    assert!(st.success(), "{err:?}");
    // END PID COMM LOCAL REMOTE …
    let local = format!("127.0.0.1:{port}");
    let lines: Vec<Vec<&str>> = out
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.get(3) == Some(&local.as_str()))
        .collect();
    assert_eq!(lines.len(), N, "{out:#?}");
    for f in &lines {
        assert_eq!(
            (f[1], f[2]),
            (pid.to_string().as_str(), Leaker::COMM),
            "{f:?}"
        );
    }
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A replay names them too, from the recording's snapshots (the holders as recorded): `life
/// --replay`'s lines, and `report --replay`'s lanes, under the server's process.
#[test]
fn a_replay_names_the_holder_from_the_recording() {
    let port = free_port();
    let ps = port.to_string();
    let dir = tempdir("tt-owners");
    let file = dir.join("leak.ttr");
    let f = file.to_str().unwrap();
    let rec = Tracer::start(&[
        "record",
        "-o",
        f,
        "--snapshot-interval",
        "1s",
        "--port",
        &ps,
    ]);
    let leaker = Leaker::start(port, N);
    let pid = leaker.pid;
    // Snapshots list the leak; a look-up that found none (the leak younger than the latest
    // snapshot then) is tried again 5 s later, in the recording's time.
    std::thread::sleep(slow(Duration::from_secs(7)));
    leaker.kill();
    std::thread::sleep(slow(Duration::from_secs(1)));
    let (st, _, err) = rec.stop();
    assert!(st.success(), "{err:?}");

    let out = run(&["life", "--replay", f, "--json", "--port", &ps]);
    let v: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_named(&server_sides(&v, port), pid);

    let html = dir.join("leak.html");
    run(&[
        "report",
        "--replay",
        f,
        "--port",
        &ps,
        "-o",
        html.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&html).unwrap();
    let start = text.find("id=\"data\">").unwrap() + "id=\"data\">".len();
    let end = start + text[start..].find("</script>").unwrap();
    let data: Value = serde_json::from_str(&text[start..end]).unwrap();
    let prefix = format!("127.0.0.1:{port} -> ");
    let lanes: Vec<&Value> = data["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["label"].as_str().unwrap().starts_with(&prefix))
        .collect();
    assert_eq!(lanes.len(), N, "a lane for each (reset): {data:#}");
    let group = format!("{} (pid {pid}), port {port}", Leaker::COMM);
    for l in lanes {
        assert_eq!(l["group"], group.as_str(), "{l}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
