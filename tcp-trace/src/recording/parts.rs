//! A recording in parts (`record --max-size`): the files named, or a directory's recordings,
//! read as one stream in part order, across the files' boundaries.

use std::{
    fs::File,
    io::{BufReader, Read},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use super::{FileHeader, Item, ReadError, Reader, Unfinished, MAGIC};
use crate::event::clock::Clock;

/// Part `part` of the recording `record -o base` writes in parts: `base.00001`, `base.00002`,
/// … (the digits keep `ls` and shell globs in order).
pub fn part_path(base: &Path, part: u32) -> PathBuf {
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".{part:05}"));
    PathBuf::from(name)
}

/// What `unfinished` says on stderr: where the file stops, and what is missing.
pub fn describe(u: &Unfinished, clock: &Clock) -> String {
    let after = u
        .last_ns
        .map_or_else(|| "its start".to_string(), |ns| clock.hms(ns));
    format!(
        "recording ended without its end frame at byte {} (the recorder was stopped \
         abruptly): events after {after} are missing",
        u.at_byte
    )
}

/// Whether `path` begins like a recording.
fn is_recording(path: &Path) -> bool {
    let mut magic = [0u8; 16];
    File::open(path).is_ok_and(|mut f| f.read_exact(&mut magic).is_ok() && &magic == MAGIC)
}

/// The files `paths` name: each file, and the recordings in each directory.
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if !p.is_dir() {
            files.push(p.clone());
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(p)
            .with_context(|| format!("reading the directory {}", p.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.is_file() && is_recording(f))
            .collect();
        anyhow::ensure!(
            !found.is_empty(),
            "{}: no tcp-trace recording in this directory",
            p.display()
        );
        found.sort();
        files.append(&mut found);
    }
    Ok(files)
}

fn open(path: &Path) -> Result<Reader<BufReader<File>>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Reader::open(BufReader::new(file)).with_context(|| format!("reading {}", path.display()))
}

/// The parts of one recording, read in order.
pub struct Parts {
    /// Files and headers, in part order.
    files: Vec<(PathBuf, FileHeader)>,
    /// The part being read (an index into `files`) and its reader.
    at: usize,
    reader: Reader<BufReader<File>>,
    clock: Clock,
}

impl Parts {
    /// Opens the files `paths` name (directories: the recordings in them). More than one file
    /// must be parts of one recording; a part missing between two is said on stderr.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        for p in expand(paths)? {
            let header = open(&p)?.header;
            files.push((p, header));
        }
        files.sort_by_key(|(_, h)| h.part);
        for pair in files.windows(2) {
            let ((a, ha), (b, hb)) = (&pair[0], &pair[1]);
            anyhow::ensure!(
                !ha.recording.is_empty() && ha.recording == hb.recording,
                "{} and {} are not parts of one recording (replay one recording at a time)",
                a.display(),
                b.display()
            );
            anyhow::ensure!(
                ha.part != hb.part,
                "{} and {} are both part {} of the recording",
                a.display(),
                b.display(),
                ha.part
            );
            if hb.part > ha.part + 1 {
                log::warn!(
                    "parts {}–{} of the recording are missing (between {} and {}): \
                     what happened between the two is not replayed",
                    ha.part + 1,
                    hb.part - 1,
                    a.display(),
                    b.display()
                );
            }
        }
        let (first, header) = files.first().context("--replay names no file")?.clone();
        if header.part > 1 {
            log::info!(
                "the replay starts at part {} (the earlier parts were rotated away)",
                header.part
            );
        }
        let boot: u128 = header
            .boot_epoch_ns
            .parse()
            .with_context(|| format!("{}: header: boot_epoch_ns", first.display()))?;
        Ok(Self {
            reader: open(&first)?,
            files,
            at: 0,
            clock: Clock::fixed(boot),
        })
    }

    /// The first part's header.
    pub fn header(&self) -> &FileHeader {
        &self.files[0].1
    }

    /// The clock the recording's times are told with.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    fn path(&self) -> &Path {
        &self.files[self.at].0
    }

    /// The next item, going on into the next part at the end of each; `Ok(None)` after the
    /// last. A fault names the file when there is more than one.
    pub fn next_item(&mut self) -> Result<Option<Item>, ReadError> {
        loop {
            match self.reader.next_item() {
                Ok(Some(item)) => return Ok(Some(item)),
                Ok(None) if self.at + 1 < self.files.len() => {
                    if let Some(u) = self.reader.unfinished() {
                        log::warn!(
                            "{}: {} (until the next part)",
                            self.path().display(),
                            describe(&u, &self.clock)
                        );
                    }
                    self.at += 1;
                    self.reader = open(self.path()).map_err(|e| ReadError {
                        offset: 0,
                        what: format!("{e:#}"),
                    })?;
                }
                Ok(None) => return Ok(None),
                Err(e) if self.files.len() > 1 => {
                    return Err(ReadError {
                        offset: e.offset,
                        what: format!("{}: {}", self.path().display(), e.what),
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// After the last item: where the last part stopped, if it stopped without its end frame.
    pub fn unfinished(&self) -> Option<Unfinished> {
        self.reader.unfinished()
    }

    /// When the recording ends: its last event or time frame (read ahead from the last part,
    /// for times given relative to the end). A cut file ends where it was cut.
    pub fn end_ns(&self) -> Result<u64> {
        let (path, _) = self.files.last().context("--replay names no file")?;
        let mut reader = open(path)?;
        let mut end = 0;
        while let Ok(Some(item)) = reader.next_item() {
            let ts = match item {
                Item::Event(e) => e.ts_ns,
                Item::Lost { ts_ns, .. } | Item::End { ts_ns } | Item::Time { ts_ns } => ts_ns,
                Item::Snapshot(s) => s.ts_ns,
                Item::Cgroup { .. } => continue,
            };
            end = end.max(ts);
        }
        Ok(end)
    }

    /// The last part's file, when the recording has more than one.
    pub fn last_of_many(&self) -> Option<&Path> {
        (self.files.len() > 1).then(|| self.path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{tests::header, Writer};

    /// Part `part` of recording `id`: a lost count at `ts`, and the end unless `cut`.
    fn write_part(dir: &Path, name: &str, id: &str, part: u32, ts: u64, cut: bool) -> PathBuf {
        let h = FileHeader {
            part,
            recording: id.into(),
            ..header()
        };
        let mut w = Writer::new(Vec::new(), &h).unwrap();
        w.item(&Item::Lost {
            ts_ns: ts,
            count: 1,
        })
        .unwrap();
        w.flush().unwrap();
        if !cut {
            w.item(&Item::End { ts_ns: ts + 1 }).unwrap();
        }
        let mut bytes = w.into_inner().unwrap();
        if cut {
            bytes.truncate(bytes.len() - 3);
        }
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn times(p: &mut Parts) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(item) = p.next_item().unwrap() {
            if let Item::Lost { ts_ns, .. } = item {
                out.push(ts_ns);
            }
        }
        out
    }

    #[test]
    fn parts_play_in_part_order_whatever_order_they_are_named_in() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("r.ttr");
        let paths: Vec<PathBuf> = [3, 1, 2]
            .iter()
            .map(|&n| {
                let name = part_path(&base, n);
                let name = name.file_name().unwrap().to_str().unwrap();
                write_part(dir.path(), name, "a", n, u64::from(n) * 10, n == 3)
            })
            .collect();
        let mut p = Parts::open(&paths).unwrap();
        assert_eq!(p.header().part, 1);
        assert_eq!(times(&mut p), [10, 20, 30]);
        assert!(p.unfinished().is_some(), "the last part was cut");

        // The directory, with a file that is not a recording beside the parts.
        std::fs::write(dir.path().join("notes.txt"), "not a recording").unwrap();
        let mut p = Parts::open(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(times(&mut p), [10, 20, 30]);
        assert_eq!(p.last_of_many(), Some(part_path(&base, 3).as_path()));
    }

    #[test]
    fn a_rotated_away_start_and_a_missing_middle_still_replay() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_part(dir.path(), "x.00004", "a", 4, 40, false);
        let b = write_part(dir.path(), "x.00006", "a", 6, 60, false);
        let mut p = Parts::open(&[b, a]).unwrap();
        assert_eq!(times(&mut p), [40, 60]);
        assert_eq!(p.unfinished(), None);
    }

    #[test]
    fn parts_of_two_recordings_or_the_same_part_twice_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_part(dir.path(), "a.00001", "a", 1, 1, false);
        let b = write_part(dir.path(), "b.00002", "b", 2, 2, false);
        let e = Parts::open(&[a.clone(), b]).err().unwrap().to_string();
        assert!(e.contains("not parts of one recording"), "{e}");
        let again = write_part(dir.path(), "c.00001", "a", 1, 1, false);
        let e = Parts::open(&[a, again]).err().unwrap().to_string();
        assert!(e.contains("both part 1"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = Parts::open(&[empty.path().to_path_buf()]).err().unwrap();
        assert!(e.to_string().contains("no tcp-trace recording"), "{e}");
    }
}
