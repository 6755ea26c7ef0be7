//! `tcp-trace serve`: the engine running continuously behind `/metrics` (the Prometheus text
//! format 0.0.4, or OpenMetrics for a client that asks for it) and `/healthz`, on the same tokio
//! runtime; optionally the NDJSON of `watch --json` and `stuck --json` to a file (rotated by
//! size) or stdout for a log shipper.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    path::PathBuf,
    sync::{atomic::Ordering, Arc},
};

use anyhow::{Context, Result};
use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};

use super::{stuck::StuckCmd, watch::Watch};
use crate::{
    commands::pipeline::{Flow, Sink},
    event::{clock::monotonic_ns, Delivery},
    host::Env,
    output::metrics::{self, Metrics},
    output::Shared,
};

/// `/healthz` fails when the ring buffer has not been drained for this long.
const STALE_NS: u64 = 2_000_000_000;

/// Whether an `Accept` header asks for OpenMetrics: it names `application/openmetrics-text`
/// (version 1.0.0, 0.0.1 or none) with a weight above 0 and at least that of the text format
/// (`text/plain`, `text/*`, `*/*`). Anything else, and no header, gets the text format 0.0.4.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
    for range in accept.unwrap_or_default().split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let (mut q, mut version) = (1.0f32, None);
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "q" => q = v.trim().parse().unwrap_or(0.0),
                "version" => version = Some(v.trim().trim_matches('"').to_string()),
                _ => {}
            }
        }
        let version = version.as_deref();
        match media.as_str() {
            "application/openmetrics-text" if matches!(version, None | Some("1.0.0" | "0.0.1")) => {
                openmetrics = openmetrics.max(q)
            }
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= text
}

async fn metrics(State(m): State<Arc<Metrics>>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let (content_type, body) = match wants_openmetrics(Some(&accept)) {
        true => (metrics::OPENMETRICS, m.openmetrics()),
        false => (metrics::TEXT, m.text()),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::VARY, "Accept"),
        ],
        body,
    )
}

async fn healthz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let last = m.last_drain_ns.load(Ordering::Relaxed);
    if last != 0 && monotonic_ns().saturating_sub(last) < STALE_NS {
        (
            StatusCode::OK,
            "ok: programs attached, ring buffer drained\n",
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "stale: the ring buffer is not being drained\n",
        )
    }
}

/// The page at `/`: what answers here and where to look (as node_exporter's landing page).
const ROOT_PAGE: &str = concat!(
    "<!DOCTYPE html>\n",
    "<html lang=\"en\">\n",
    "<head><meta charset=\"utf-8\"><title>tcp-trace</title></head>\n",
    "<body>\n",
    "<h1>tcp-trace ",
    env!("CARGO_PKG_VERSION"),
    "</h1>\n",
    "<ul>\n",
    "<li><a href=\"/metrics\">/metrics</a>: Prometheus metrics</li>\n",
    "<li><a href=\"/healthz\">/healthz</a>: health (the kernel programs are attached and \
     their ring buffer is being drained)</li>\n",
    "</ul>\n",
    "</body>\n",
    "</html>\n",
);

async fn root() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        ROOT_PAGE,
    )
}

/// Serves `/metrics` and `/healthz` (and a page at `/` that links them) on `listener` (a task
/// on the current runtime).
pub fn spawn_http(listener: tokio::net::TcpListener, m: Arc<Metrics>) {
    let app = Router::new()
        .route("/", get(root))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(m);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            log::error!("http server: {e}");
        }
    });
}

/// A file that starts over (the old one renamed to `PATH.1`) past a size.
pub struct Rotating {
    path: PathBuf,
    file: BufWriter<File>,
    written: u64,
    max: u64,
}

impl Rotating {
    /// Appends to `path`, rotating past `max` bytes.
    pub fn open(path: PathBuf, max: u64) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let written = file.metadata().map_or(0, |m| m.len());
        Ok(Self {
            path,
            file: BufWriter::new(file),
            written,
            max,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        fs::rename(&self.path, old)?;
        self.file = BufWriter::new(File::create(&self.path)?);
        self.written = 0;
        Ok(())
    }
}

impl Write for Rotating {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Rotate only between lines, so each file holds whole NDJSON objects.
        if self.written >= self.max && buf.first() == Some(&b'{') {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// `serve`'s sink: the stuck/half-open evaluation (which feeds the metrics), and every event
/// as `watch --json` when an event stream was asked for.
pub struct Serve {
    /// The `stuck` sink (metrics attached).
    pub stuck: StuckCmd<Shared>,
    /// The `watch --json` sink, when events go to a stream.
    pub watch: Option<Watch<Shared>>,
}

impl Sink for Serve {
    fn batch(&mut self, records: &[Delivery], env: &mut dyn Env) -> Result<Flow> {
        if let Some(w) = self.watch.as_mut() {
            w.batch(records, env)?;
        }
        self.stuck.batch(records, env)
    }

    fn finish(&mut self, env: &mut dyn Env) -> Result<()> {
        if let Some(w) = self.watch.as_mut() {
            w.finish(env)?;
        }
        self.stuck.finish(env)
    }

    fn wakeup(&self) -> Option<u64> {
        self.stuck.wakeup()
    }
}

#[cfg(test)]
mod tests {
    use super::wants_openmetrics;

    #[test]
    fn openmetrics_only_for_a_client_that_asks_for_it() {
        // Prometheus 2's scrape (and with protobuf first, which tcp-trace does not speak).
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,\
                          application/openmetrics-text;version=0.0.1;q=0.4,\
                          text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert!(wants_openmetrics(Some(prometheus)));
        let proto = format!(
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;\
             encoding=delimited;q=0.7,{prometheus}"
        );
        assert!(wants_openmetrics(Some(&proto)));
        assert!(wants_openmetrics(Some("application/openmetrics-text")));
        assert!(wants_openmetrics(Some(
            "Application/OpenMetrics-Text; version=\"1.0.0\""
        )));
        for text in [
            None,
            Some(""),
            Some("*/*"),
            Some("text/plain;version=0.0.4"),
            Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"),
            Some("application/openmetrics-text;q=0"),
            Some("application/openmetrics-text;version=2.0.0"),
            Some("application/json"),
        ] {
            assert!(!wants_openmetrics(text), "{text:?}");
        }
    }
}
