//! Recordings: what `tcp-trace record` writes and `--replay` reads.
//!
//! Format (version 4), little-endian:
//!
//! ```text
//! "TCPTRACE-RECORD\n"                      magic
//! u32 length, JSON header                  version, host, kernel, start, clock offset, …
//! zstd frames (one per flush, each checksummed) holding frames: u8 tag, u32 length, payload
//!   1 event     the kernel's record bytes (`tcp_trace_common` layout; decoded by event::decode)
//!   2 lost      u64 monotonic ns, u64 count
//!   3 snapshot  JSON: sock_diag sockets and their /proc holders at a monotonic time
//!   4 end       u64 monotonic ns (a complete recording ends with it)
//!   5 cgroup    u64 cgroup id, UTF-8 path (written before the first event from that cgroup)
//!   6 time      u64 monotonic ns: the recorder was running then (written at each flush, so a
//!               recording cut short replays up to its last second)
//! ```
//!
//! Events keep the kernel's binary layout and snapshots are JSON; the zstd stream takes out
//! what repeats from event to event. Crash safety: the header reaches the file at once, and
//! [`Writer::flush`] (once a second) ends a zstd frame, checksum included, so every item written
//! before a flush can be read back, checked, whatever happens to the writer afterwards. A
//! reader that meets the end of the file inside a zstd frame (the writer was stopped
//! mid-write) stops there cleanly and says so ([`Reader::unfinished`]); anything else that does
//! not decode is an error. From version 3 the offsets of errors are in the decompressed stream
//! of frames. Version 4's snapshots also list the timewait sockets (FIN_WAIT2 or TIME_WAIT) of
//! the sockets that went FIN_WAIT2 → CLOSE, so that a replay tells how those connections
//! ended. Versions 1 and 2 (frames not compressed; version 1 before events
//! carried the socket's network namespace and cgroup) are still read.

mod parts;
mod replay;

pub use parts::{describe, part_path, Parts};
pub use replay::Replay;

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::{
    event::{decode, encode, Event, ResetReasons},
    host::{owners::Holder, sockdiag::DiagSocket},
};

/// The first bytes of every recording.
pub const MAGIC: &[u8; 16] = b"TCPTRACE-RECORD\n";
/// The format version this build writes and the newest it reads.
pub const VERSION: u32 = 4;
/// The first version whose frames are one zstd stream.
const FIRST_ZSTD: u32 = 3;
/// The first version whose snapshots list the timewait sockets of the sockets that went
/// FIN_WAIT2 → CLOSE (the frames are version 3's).
const FIRST_TIMEWAIT: u32 = 4;
/// zstd's level: its default, fast enough to keep up with the ring buffer on one core.
const ZSTD_LEVEL: i32 = 3;

const TAG_EVENT: u8 = 1;
const TAG_LOST: u8 = 2;
const TAG_SNAPSHOT: u8 = 3;
const TAG_END: u8 = 4;
const TAG_CGROUP: u8 = 5;
const TAG_TIME: u8 = 6;
/// Where version 1's shorter event header ended (the namespace and cgroup fields follow it in
/// version 2).
const V1_HEADER_END: usize = 80;
/// Larger frames are corruption, not data.
const MAX_FRAME: u32 = 64 << 20;
/// Frames up to this size are assembled before they are written.
const SMALL_FRAME: usize = 4096;

/// The largest plausible frame of each tag (a length beyond it is corruption).
fn max_len(tag: u8) -> u32 {
    match tag {
        TAG_EVENT => 1024,
        TAG_LOST => 16,
        TAG_END | TAG_TIME => 8,
        TAG_CGROUP => 8 + 4096,
        _ => MAX_FRAME,
    }
}

/// The recording's header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHeader {
    /// Format version.
    pub version: u32,
    /// Host name.
    pub host: String,
    /// Kernel release.
    pub kernel: String,
    /// Wall-clock start, RFC 3339.
    pub start: String,
    /// Wall-clock ns since the epoch at monotonic 0 (as a decimal string: it exceeds u64
    /// precision in some JSON readers).
    pub boot_epoch_ns: String,
    /// `net.ipv4.tcp_fin_timeout` in seconds when recorded.
    pub fin_timeout_s: u64,
    /// The tcp-trace version that wrote it.
    pub tool: String,
    /// Which part of its recording this file is: 1, 2, … as `record --max-size` starts new
    /// files (0: written before recordings had parts).
    #[serde(default)]
    pub part: u32,
    /// The same in every part of one recording, and in no other recording.
    #[serde(default)]
    pub recording: String,
    /// The recording kernel's names of its reset reasons (`enum sk_rst_reason`) by number:
    /// they differ between kernel versions. Empty on kernels without them and in recordings
    /// made before they were kept (readers of those ignore the key: no new version).
    #[serde(default)]
    pub reset_reasons: ResetReasons,
}

/// Sockets and their holders at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Monotonic ns.
    pub ts_ns: u64,
    /// What sock_diag listed.
    pub sockets: Vec<DiagSocket>,
    /// inode → holders.
    pub holders: Vec<(u32, Vec<Holder>)>,
}

/// One item of a recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A kernel event.
    Event(Event),
    /// Events the kernel could not queue.
    Lost {
        /// When noticed.
        ts_ns: u64,
        /// How many.
        count: u64,
    },
    /// A sock_diag snapshot.
    Snapshot(Box<Snapshot>),
    /// The clean end.
    End {
        /// When recording stopped.
        ts_ns: u64,
    },
    /// The recorder was running at this time.
    Time {
        /// Monotonic ns.
        ts_ns: u64,
    },
    /// A cgroup id and its path (for `--cgroup` and output in a replay).
    Cgroup {
        /// The id events carry.
        id: u64,
        /// As `/proc/PID/cgroup` writes it.
        path: String,
    },
}

/// Writes a recording.
pub struct Writer<W: Write> {
    /// The zstd frame being written (`None` only while one is finished and the next begun).
    z: Option<zstd::stream::write::Encoder<'static, Counted<W>>>,
    /// One item's frame, built before it is handed to zstd in one write.
    buf: Vec<u8>,
}

/// A zstd frame (with its checksum) over `w`.
fn zstd_frame<W: Write>(w: W) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut z = zstd::stream::write::Encoder::new(w, ZSTD_LEVEL)?;
    z.include_checksum(true)?;
    Ok(z)
}

impl<W: Write> Writer<W> {
    /// Writes the magic and the header, and flushes them: a recording killed at once still
    /// says what it is.
    pub fn new(w: W, header: &FileHeader) -> io::Result<Self> {
        let mut w = Counted { r: w, n: 0 };
        w.write_all(MAGIC)?;
        let h = serde_json::to_vec(header)?;
        w.write_all(&(h.len() as u32).to_le_bytes())?;
        w.write_all(&h)?;
        w.flush()?;
        Ok(Self {
            z: Some(zstd_frame(w)?),
            buf: Vec::with_capacity(256),
        })
    }

    fn frame(&mut self, tag: u8, payload: &[u8]) -> io::Result<()> {
        let Some(z) = &mut self.z else {
            return Err(io::Error::other("recording writer failed earlier"));
        };
        let len = (payload.len() as u32).to_le_bytes();
        // Small frames (events) in one write; a large one (a snapshot) is not copied, so the
        // buffer never grows to the largest snapshot.
        if payload.len() > SMALL_FRAME {
            z.write_all(&[tag])?;
            z.write_all(&len)?;
            return z.write_all(payload);
        }
        self.buf.clear();
        self.buf.push(tag);
        self.buf.extend_from_slice(&len);
        self.buf.extend_from_slice(payload);
        z.write_all(&self.buf)
    }

    /// One item.
    pub fn item(&mut self, item: &Item) -> io::Result<()> {
        match item {
            Item::Event(ev) => self.frame(TAG_EVENT, &encode(ev)),
            Item::Lost { ts_ns, count } => {
                let mut p = ts_ns.to_le_bytes().to_vec();
                p.extend_from_slice(&count.to_le_bytes());
                self.frame(TAG_LOST, &p)
            }
            Item::Snapshot(s) => self.frame(TAG_SNAPSHOT, &serde_json::to_vec(s)?),
            Item::End { ts_ns } => self.frame(TAG_END, &ts_ns.to_le_bytes()),
            Item::Time { ts_ns } => self.frame(TAG_TIME, &ts_ns.to_le_bytes()),
            Item::Cgroup { id, path } => {
                let mut p = id.to_le_bytes().to_vec();
                p.extend_from_slice(path.as_bytes());
                self.frame(TAG_CGROUP, &p)
            }
        }
    }

    /// Ends the current zstd frame (its checksum covers what it holds), flushes the sink and
    /// begins the next frame: every item so far can be read back, and checked, from what the
    /// sink holds.
    pub fn flush(&mut self) -> io::Result<()> {
        let z = self
            .z
            .take()
            .ok_or_else(|| io::Error::other("recording writer failed earlier"))?;
        let mut w = z.finish()?;
        w.flush()?;
        self.z = Some(zstd_frame(w)?);
        Ok(())
    }

    /// Ends the zstd stream, flushes and returns the sink.
    pub fn into_inner(mut self) -> io::Result<W> {
        let z = self
            .z
            .take()
            .ok_or_else(|| io::Error::other("recording writer failed earlier"))?;
        let mut w = z.finish()?;
        w.flush()?;
        Ok(w.r)
    }

    /// Bytes handed to the sink so far (all but what zstd holds of its current block).
    pub fn bytes(&self) -> u64 {
        self.z.as_ref().map_or(0, |z| z.get_ref().n)
    }
}

/// A malformed recording: what and where.
#[derive(Debug, PartialEq, Eq)]
pub struct ReadError {
    /// Byte offset of the frame (or header) that is wrong.
    pub offset: u64,
    /// What is wrong.
    pub what: String,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.offset)
    }
}

impl std::error::Error for ReadError {}

/// A recording that stops without its end frame: where, and the time of its last item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unfinished {
    /// Bytes of the file read.
    pub at_byte: u64,
    /// Monotonic ns of the last item read (`None`: no timed item).
    pub last_ns: Option<u64>,
}

/// Counts the bytes read from the file, or written to it.
struct Counted<R> {
    r: R,
    n: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.r.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.r.flush()
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.r.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

/// The frames after the header: as stored (versions 1, 2) or through zstd.
enum Frames<R: Read> {
    Plain(Counted<R>),
    Zstd(Checked<R>),
}

impl<R: Read> Frames<R> {
    fn file_bytes(&self) -> u64 {
        match self {
            Self::Plain(c) => c.n,
            Self::Zstd(c) => c.src.as_ref().map_or(0, |s| s.get_ref().n),
        }
    }
}

/// The zstd stream a whole zstd frame at a time: nothing of a frame is read until its
/// checksum has been verified, so a damaged frame is an error before any of its items (which
/// a streaming decoder would hand out first, garbled), and a frame the writer never finished
/// (the end of the file inside it) yields none of its items.
struct Checked<R: Read> {
    /// `None` only while a frame is being decoded.
    src: Option<io::BufReader<Counted<R>>>,
    frame: Vec<u8>,
    pos: usize,
}

impl<R: Read> Checked<R> {
    fn new(r: Counted<R>) -> Self {
        Self {
            src: Some(io::BufReader::with_capacity(128 << 10, r)),
            frame: Vec::new(),
            pos: 0,
        }
    }
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.frame.len() {
            let Some(mut src) = self.src.take() else {
                return Ok(0);
            };
            if io::BufRead::fill_buf(&mut src)?.is_empty() {
                self.src = Some(src);
                return Ok(0); // the file ends between frames
            }
            let mut d = zstd::stream::read::Decoder::with_buffer(src)?.single_frame();
            self.frame.clear();
            self.pos = 0;
            let decoded = d.read_to_end(&mut self.frame);
            self.src = Some(d.into_inner());
            if let Err(e) = decoded {
                self.frame.clear();
                return Err(e);
            }
        }
        let n = buf.len().min(self.frame.len() - self.pos);
        buf[..n].copy_from_slice(&self.frame[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<R: Read> Read for Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(r) => r.read(buf),
            Self::Zstd(r) => r.read(buf),
        }
    }
}

/// Reads a recording, item by item.
pub struct Reader<R: Read> {
    r: Frames<R>,
    offset: u64,
    /// The header.
    pub header: FileHeader,
    ended: bool,
    /// The file ended without the end frame.
    cut: bool,
    last_ns: Option<u64>,
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl<R: Read> Reader<R> {
    /// Checks the magic and the version, reads the header.
    pub fn open(r: R) -> Result<Self, ReadError> {
        let mut r = Counted { r, n: 0 };
        let err = |offset, what: String| ReadError { offset, what };
        let mut magic = [0u8; 16];
        let n = read_full(&mut r, &mut magic).map_err(|e| err(0, e.to_string()))?;
        if n < 16 || &magic != MAGIC {
            return Err(err(0, "not a tcp-trace recording (bad magic)".into()));
        }
        let mut len = [0u8; 4];
        if read_full(&mut r, &mut len).map_err(|e| err(16, e.to_string()))? < 4 {
            return Err(err(16, "truncated header".into()));
        }
        let len = u32::from_le_bytes(len);
        if len > MAX_FRAME {
            return Err(err(16, format!("header length {len} is not plausible")));
        }
        let mut h = vec![0u8; len as usize];
        if read_full(&mut r, &mut h).map_err(|e| err(20, e.to_string()))? < h.len() {
            return Err(err(20, "truncated header".into()));
        }
        // Check the version before anything else a newer format may have changed.
        let v: serde_json::Value =
            serde_json::from_slice(&h).map_err(|e| err(20, format!("malformed header: {e}")))?;
        let version = v["version"].as_u64().unwrap_or(0);
        if version > u64::from(VERSION) {
            return Err(err(
                20,
                format!("recording format version {version} is newer than this tcp-trace reads (up to {VERSION}); use a newer tcp-trace"),
            ));
        }
        let header: FileHeader =
            serde_json::from_value(v).map_err(|e| err(20, format!("malformed header: {e}")))?;
        let offset = 20 + u64::from(len);
        let r = if header.version >= FIRST_ZSTD {
            Frames::Zstd(Checked::new(r))
        } else {
            Frames::Plain(r)
        };
        Ok(Self {
            r,
            offset,
            header,
            ended: false,
            cut: false,
            last_ns: None,
        })
    }

    /// The next item; `Ok(None)` at the end of the file, whether or not it ended cleanly (see
    /// [`Reader::unfinished`]). The end of the file inside a frame or a zstd block is such an
    /// end (the writer was stopped mid-write); anything else malformed is an error.
    pub fn next_item(&mut self) -> Result<Option<Item>, ReadError> {
        let at = self.offset;
        let err = |what: String| ReadError { offset: at, what };
        // Only a zstd frame cut short is a writer stopped mid-write; in versions 1 and 2 (no
        // zstd) a short frame stays an error, as it always was.
        let zstd = matches!(self.r, Frames::Zstd(_));
        let cut_short = |e: &io::Error| zstd && e.kind() == io::ErrorKind::UnexpectedEof;
        let mut head = [0u8; 5];
        let n = match read_full(&mut self.r, &mut head) {
            Ok(n) => n,
            // Only the checksum after the end frame is missing: nothing is.
            Err(e) if cut_short(&e) && self.ended => return Ok(None),
            Err(e) if cut_short(&e) => {
                self.cut = true;
                return Ok(None);
            }
            Err(e) => return Err(err(e.to_string())),
        };
        if n == 0 {
            self.cut = !self.ended;
            return Ok(None);
        }
        if self.ended {
            return Err(err("data after the end frame".into()));
        }
        if n < 5 {
            return Err(err("truncated frame header".into()));
        }
        let tag = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if len > max_len(tag) {
            return Err(err(format!(
                "frame length {len} is not plausible for tag {tag}"
            )));
        }
        let mut p = vec![0u8; len as usize];
        let got = match read_full(&mut self.r, &mut p) {
            Ok(n) => n,
            Err(e) if cut_short(&e) => {
                self.cut = true;
                return Ok(None);
            }
            Err(e) => return Err(err(e.to_string())),
        };
        if got < p.len() {
            return Err(err(format!("truncated frame (tag {tag}, {len} bytes)")));
        }
        self.offset += 5 + u64::from(len);
        let u64_at = |p: &[u8], i: usize| -> Option<u64> {
            p.get(i..i + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        };
        if self.header.version == 1 && tag == TAG_EVENT && p.len() >= V1_HEADER_END {
            p.splice(V1_HEADER_END..V1_HEADER_END, [0u8; 16]);
        }
        let item = match tag {
            TAG_EVENT => Item::Event(decode(&p).map_err(|e| err(format!("bad event: {e}")))?),
            TAG_LOST => match (u64_at(&p, 0), u64_at(&p, 8)) {
                (Some(ts_ns), Some(count)) if p.len() == 16 => Item::Lost { ts_ns, count },
                _ => return Err(err("bad lost frame".into())),
            },
            TAG_SNAPSHOT => Item::Snapshot(Box::new(
                serde_json::from_slice(&p).map_err(|e| err(format!("bad snapshot: {e}")))?,
            )),
            TAG_END => match u64_at(&p, 0) {
                Some(ts_ns) if p.len() == 8 => {
                    self.ended = true;
                    Item::End { ts_ns }
                }
                _ => return Err(err("bad end frame".into())),
            },
            TAG_TIME => match u64_at(&p, 0) {
                Some(ts_ns) if p.len() == 8 => Item::Time { ts_ns },
                _ => return Err(err("bad time frame".into())),
            },
            TAG_CGROUP => match (u64_at(&p, 0), p.get(8..).map(std::str::from_utf8)) {
                (Some(id), Some(Ok(path))) => Item::Cgroup {
                    id,
                    path: path.to_string(),
                },
                _ => return Err(err("bad cgroup frame".into())),
            },
            t => return Err(err(format!("unknown frame tag {t}"))),
        };
        match &item {
            Item::Event(ev) => self.last_ns = Some(ev.ts_ns),
            Item::Lost { ts_ns, .. } | Item::End { ts_ns } | Item::Time { ts_ns } => {
                self.last_ns = Some(*ts_ns)
            }
            Item::Snapshot(s) => self.last_ns = Some(s.ts_ns),
            Item::Cgroup { .. } => {}
        }
        Ok(Some(item))
    }

    /// Whether the end frame was seen.
    pub fn ended_cleanly(&self) -> bool {
        self.ended
    }

    /// After the last item: where the file stopped, if it stopped without its end frame.
    pub fn unfinished(&self) -> Option<Unfinished> {
        self.cut.then(|| Unfinished {
            at_byte: self.r.file_bytes(),
            last_ns: self.last_ns,
        })
    }

    /// Where the next frame starts, in the stream of frames (in versions 1 and 2, the file).
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn header() -> FileHeader {
        FileHeader {
            version: VERSION,
            host: "h".into(),
            kernel: "6.18".into(),
            start: "2026-11-23T00:00:00Z".into(),
            boot_epoch_ns: "1700000000000000000".into(),
            fin_timeout_s: 60,
            tool: "test".into(),
            part: 1,
            recording: "r1".into(),
            reset_reasons: [(11, "TCP_ABORT_ON_CLOSE".to_string())]
                .into_iter()
                .collect(),
        }
    }

    /// The reset reasons' names are one more header key: a header without it (an older
    /// recording) reads with none, and a key this build does not know is ignored, as older
    /// builds ignore this one.
    #[test]
    fn the_header_reads_with_and_without_reset_reasons() {
        let mut v = serde_json::to_value(header()).unwrap();
        assert_eq!(v["reset_reasons"]["11"], "TCP_ABORT_ON_CLOSE");
        v["some_later_key"] = serde_json::json!({"x": 1});
        let h: FileHeader = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(h, header());
        v.as_object_mut().unwrap().remove("reset_reasons");
        let old: FileHeader = serde_json::from_value(v).unwrap();
        assert!(old.reset_reasons.is_empty());
        assert_eq!(old.reset_reasons.name(11), None);
    }

    #[test]
    fn round_trip_and_clean_end() {
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        w.item(&Item::Lost { ts_ns: 5, count: 7 }).unwrap();
        w.item(&Item::Snapshot(Box::default())).unwrap();
        w.item(&Item::End { ts_ns: 9 }).unwrap();
        let bytes = w.into_inner().unwrap();
        let mut r = Reader::open(&bytes[..]).unwrap();
        assert_eq!(r.header, header());
        assert_eq!(
            r.next_item().unwrap(),
            Some(Item::Lost { ts_ns: 5, count: 7 })
        );
        assert!(matches!(r.next_item().unwrap(), Some(Item::Snapshot(_))));
        assert_eq!(r.next_item().unwrap(), Some(Item::End { ts_ns: 9 }));
        assert_eq!(r.next_item().unwrap(), None);
        assert!(r.ended_cleanly());
    }

    /// A writer stopped at any byte: every frame flushed before the cut is read back, then
    /// the reader stops and says where, with the time of the last item.
    #[test]
    fn a_cut_anywhere_keeps_every_flushed_frame() {
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        w.item(&Item::Lost { ts_ns: 1, count: 1 }).unwrap();
        w.flush().unwrap();
        let flushed = w.z.as_ref().unwrap().get_ref().r.len();
        w.item(&Item::Lost { ts_ns: 2, count: 2 }).unwrap();
        let bytes = w.into_inner().unwrap();
        let header_end = 20 + serde_json::to_vec(&header()).unwrap().len();
        for len in 0..bytes.len() {
            let Ok(mut r) = Reader::open(&bytes[..len]) else {
                assert!(len < header_end, "the header is complete at {len}");
                continue;
            };
            let mut items = 0;
            while r.next_item().unwrap().is_some() {
                items += 1;
            }
            assert!(
                items >= usize::from(len >= flushed),
                "cut at {len}: {items} items"
            );
            let u = r.unfinished().expect("no end frame");
            assert_eq!(u.at_byte, len as u64);
            assert_eq!(u.last_ns, (items > 0).then_some(items as u64));
        }
    }

    #[test]
    fn corruption_inside_is_an_error() {
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        for i in 0..50 {
            w.item(&Item::Lost { ts_ns: i, count: i }).unwrap();
        }
        w.item(&Item::End { ts_ns: 99 }).unwrap();
        let mut bytes = w.into_inner().unwrap();
        let at = bytes.len() - 20;
        bytes[at] ^= 0x5a;
        let mut r = Reader::open(&bytes[..]).unwrap();
        let outcome = loop {
            match r.next_item() {
                Ok(Some(_)) => {}
                other => break other,
            }
        };
        assert!(outcome.is_err(), "{outcome:?}");
    }

    #[test]
    fn cgroup_frames_round_trip() {
        let mut w = Writer::new(Vec::new(), &header()).unwrap();
        let item = Item::Cgroup {
            id: 42,
            path: "/system.slice/x.service".into(),
        };
        w.item(&item).unwrap();
        let bytes = w.into_inner().unwrap();
        assert_eq!(
            Reader::open(&bytes[..]).unwrap().next_item(),
            Ok(Some(item))
        );
    }

    #[test]
    fn version_1_events_read_with_unknown_namespace_and_cgroup() {
        let ev = crate::event::decode(&crate::event::encode(&crate::event::Event {
            netns: 0,
            cgroup: 0,
            ..sample_event()
        }))
        .unwrap();
        // A version 1 event record: the version 2 one without its 16 bytes at offset 80.
        let mut v1 = encode(&ev);
        v1.drain(V1_HEADER_END..V1_HEADER_END + 16);
        let mut h = header();
        h.version = 1;
        // Versions 1 and 2: the header, then the frames as they are.
        let json = serde_json::to_vec(&h).unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend((json.len() as u32).to_le_bytes());
        bytes.extend(&json);
        bytes.push(TAG_EVENT);
        bytes.extend((v1.len() as u32).to_le_bytes());
        bytes.extend(&v1);
        let mut r = Reader::open(&bytes[..]).unwrap();
        assert_eq!(r.next_item().unwrap(), Some(Item::Event(ev)));
    }

    fn sample_event() -> crate::event::Event {
        use crate::event::{Comm, EventKind, Task, TcpState};
        let task = Task {
            pid: 3,
            tid: 3,
            comm: Comm::from_bytes(b"curl"),
        };
        let lo = "127.0.0.1".parse().unwrap();
        let kind = EventKind::state(TcpState::CLOSE_WAIT, TcpState::LAST_ACK);
        crate::event::Event {
            netns: 4026531840,
            cgroup: 9,
            ..crate::event::Event::new(5, 0xffff_0001, task, (lo, 4000), (lo, 80), kind)
        }
    }

    #[test]
    fn newer_version_is_refused_clearly() {
        let mut h = header();
        h.version = VERSION + 1;
        let bytes = Writer::new(Vec::new(), &h).unwrap().into_inner().unwrap();
        let e = Reader::open(&bytes[..]).err().unwrap();
        assert!(e.what.contains("newer than this tcp-trace reads"), "{e}");
        assert!(Reader::open(&b"hello world, not a recording"[..]).is_err());
    }
}
