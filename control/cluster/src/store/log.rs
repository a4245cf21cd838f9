//! The durable Raft log, vote and committed index of one manager.
//!
//! Layout of the storage directory (0700, every file 0600, see [`crate::private_fs`]):
//! - `log.sealed`: one record a line, each sealed with the manager's data key
//!   ([`DataKey`]; base64 of nonce, ciphertext and tag) and appended and fsynced before
//!   openraft is told the write is done (entries: fsynced on the flusher's thread, see
//!   `flusher.rs`): an entry, a truncation (`from` index on), or a
//!   purge (up to a log ID). Replaying the records gives the log. A torn last line (a
//!   crash mid-write leaves no newline after it) is cut off at open; a whole line that
//!   does not open (damaged, or sealed under another key) refuses to open. When dead
//!   records outnumber live entries the file is rewritten (temp file, fsync, rename).
//! - `log.jsonl`: the same records in plain JSON, as older agents wrote them: sealed into
//!   `log.sealed` at open, then removed.
//! - `vote.json`: the vote (term + voted-for), written to a temp file, fsynced, renamed, and
//!   the directory fsynced, before openraft proceeds.
//! - `committed.json`: the last known committed log ID, a hint only (openraft allows it to
//!   lag), so it is renamed into place without fsync.
//!
//! The vote and the committed index hold no secret (terms, member IDs, indexes); entries
//! do (join tokens, gossip keys, services' environments), so they are never on disk in
//! the clear. Entries are also kept in memory: the cluster store is small and snapshots
//! purge the log.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogId, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};

use super::flusher::{Done, Flusher};
use super::latency::LatencyHistogram;
use super::{RaftId, TypeConfig};
use crate::private_fs::{self, write_atomic};
use crate::seal::DataKey;

const LOG_FILE: &str = "log.sealed";
/// The plain log of older agents, sealed into [`LOG_FILE`] at open.
const PLAIN_LOG_FILE: &str = "log.jsonl";
const VOTE_FILE: &str = "vote.json";
const COMMITTED_FILE: &str = "committed.json";
/// Associated data of every sealed record.
const RECORD_CONTEXT: &[u8] = b"shoal raft log record v1";

// Externally tagged: an internally tagged enum buffers its content, and buffered JSON
// cannot turn the membership's string map keys back into `u64` member IDs.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    Entry { entry: Entry<TypeConfig> },
    Truncate { from: u64 },
    Purge { upto: LogId<RaftId> },
}

struct Inner {
    dir: PathBuf,
    key: DataKey,
    file: File,
    /// Records in `log.sealed`, live or dead.
    records: usize,
    vote: Option<Vote<RaftId>>,
    committed: Option<LogId<RaftId>>,
    last_purged: Option<LogId<RaftId>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
}

/// Openraft's log storage; clones share one log.
#[derive(Clone)]
pub(crate) struct LogStore {
    inner: Arc<Mutex<Inner>>,
    /// How long each durable write waited on the disk.
    fsync: Arc<LatencyHistogram>,
    /// Appended entries' fsyncs, off the caller's thread.
    flusher: Arc<Flusher>,
}

fn io_err(what: &str, path: &Path, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{what} {}: {e}", path.display()))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io_err("parse", path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// One record as a sealed line (newline included).
fn sealed_line(key: &DataKey, record: &Record) -> io::Result<Vec<u8>> {
    let plain = serde_json::to_vec(record).map_err(io::Error::other)?;
    let sealed = key
        .seal(RECORD_CONTEXT, &plain)
        .map_err(|e| io::Error::other(format!("sealing a Raft log record: {e}")))?;
    let mut line = STANDARD.encode(sealed).into_bytes();
    line.push(b'\n');
    Ok(line)
}

/// Splits `bytes` into whole lines; the length of the whole lines (what follows the last
/// newline is a torn write).
fn whole_lines(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut lines = Vec::new();
    let mut good = 0;
    while let Some(nl) = bytes[good..].iter().position(|&b| b == b'\n') {
        lines.push(&bytes[good..good + nl]);
        good += nl + 1;
    }
    (lines, good)
}

/// Seals an older agent's plain `log.jsonl` into `log.sealed` (temp file, fsync,
/// rename), then removes the plain one. A plain file beside a sealed one is what a
/// crash after the rename left: the sealed one is complete, the plain one goes.
fn seal_plain_log(dir: &Path, key: &DataKey) -> io::Result<()> {
    let plain_path = dir.join(PLAIN_LOG_FILE);
    let bytes = match fs::read(&plain_path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let path = dir.join(LOG_FILE);
    if !path.exists() {
        let mut sealed = Vec::new();
        let mut rest = &bytes[..];
        let mut at = 0usize;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            match serde_json::from_slice::<Record>(&rest[..nl]) {
                Ok(record) => sealed.extend(sealed_line(key, &record)?),
                // The old format's torn last record: dropped, as the old reader did.
                Err(_) if rest[nl + 1..].iter().all(|b| b.is_ascii_whitespace()) => break,
                Err(e) => {
                    return Err(io_err(
                        "corrupt record in",
                        &plain_path,
                        format!("at byte {at}: {e}"),
                    ))
                }
            }
            at += nl + 1;
            rest = &rest[nl + 1..];
        }
        write_atomic(&path, &sealed, true)?;
        tracing::info!(path = %path.display(), "sealed the plain Raft log an older agent left");
    }
    fs::remove_file(&plain_path)?;
    File::open(dir)?.sync_all()
}

impl LogStore {
    /// Opens (or creates) the log in `dir`, sealed with `key`, and replays it.
    pub(crate) fn open(dir: &Path, key: &DataKey) -> io::Result<Self> {
        private_fs::create_dir(dir)?;
        seal_plain_log(dir, key)?;
        let vote = read_json(&dir.join(VOTE_FILE))?;
        // A hint: unreadable (torn by a crash) means unknown.
        let committed = read_json(&dir.join(COMMITTED_FILE)).unwrap_or(None);
        let path = dir.join(LOG_FILE);
        let mut file = private_fs::open_append(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;

        let mut entries = BTreeMap::new();
        let mut last_purged: Option<LogId<RaftId>> = None;
        let (lines, good) = whole_lines(&bytes);
        let records = lines.len();
        for (n, line) in lines.into_iter().enumerate() {
            let record: Record = STANDARD
                .decode(line)
                .map_err(|e| e.to_string())
                .and_then(|sealed| key.open(RECORD_CONTEXT, &sealed).map_err(|e| e.to_string()))
                .and_then(|plain| serde_json::from_slice(&plain).map_err(|e| e.to_string()))
                .map_err(|e| {
                    io_err(
                        "record that does not open in",
                        &path,
                        format!(
                            "record {} (damaged, or sealed under another data key): {e}",
                            n + 1
                        ),
                    )
                })?;
            match record {
                Record::Entry { entry } => {
                    entries.insert(entry.log_id.index, entry);
                }
                Record::Truncate { from } => {
                    entries.split_off(&from);
                }
                Record::Purge { upto } => {
                    entries = entries.split_off(&(upto.index + 1));
                    last_purged = Some(upto);
                }
            }
        }
        if good != bytes.len() {
            tracing::warn!(
                path = %path.display(),
                dropped = bytes.len() - good,
                "cutting a torn record off the end of the Raft log"
            );
            file.set_len(good as u64)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::End(0))?;
        let fsync = Arc::<LatencyHistogram>::default();
        Ok(LogStore {
            flusher: Arc::new(Flusher::start(fsync.clone())?),
            fsync,
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_path_buf(),
                key: key.clone(),
                file,
                records,
                vote,
                committed,
                last_purged,
                entries,
            })),
        })
    }

    /// Openraft's `append`: the entries written and in the in-memory log when this
    /// returns, durable when `done` is called (from the flusher's thread), which is
    /// called with the error too when writing fails.
    fn append_entries(&self, entries: Vec<Entry<TypeConfig>>, done: Done) -> io::Result<()> {
        let mut inner = self.lock();
        let records: Vec<_> = entries
            .iter()
            .map(|e| Record::Entry { entry: e.clone() })
            .collect();
        let written = inner
            .write_records_unsynced(&records)
            .and_then(|()| inner.file.try_clone())
            .and_then(|file| {
                for e in entries {
                    inner.entries.insert(e.log_id.index, e);
                }
                // After the in-memory log has them: a compaction writes that log.
                inner.maybe_compact().map(|()| file)
            });
        drop(inner);
        match written {
            Ok(file) => {
                self.flusher.flush(file, done);
                Ok(())
            }
            Err(e) => {
                done(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    /// The histogram of this log's fsync times (entries appended, votes saved).
    pub(crate) fn fsync_latency(&self) -> Arc<LatencyHistogram> {
        self.fsync.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the in-memory copy possibly ahead of the file;
        // the file is the truth, and openraft stops on a panic anyway.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `swarm init --force-new-cluster`: makes `id` (at `addr`) the only voter of the log
/// in `dir`, keeping every entry. A membership entry naming it alone is appended after
/// the last entry, in a term above any this member has seen (its vote moves there, for
/// itself), so that no other member can hold a different entry with the same ID. When
/// the member starts again, the newest membership in its log is its own: it elects
/// itself and commits everything it holds. Only while the member is stopped.
pub(crate) fn force_single_voter(
    dir: &Path,
    key: &DataKey,
    id: RaftId,
    addr: String,
) -> io::Result<LogId<RaftId>> {
    let store = LogStore::open(dir, key)?;
    let mut inner = store.lock();
    let last = inner
        .entries
        .values()
        .next_back()
        .map(|e| e.log_id)
        .or(inner.last_purged)
        .ok_or_else(|| io::Error::other("the Raft log is empty: there is no state to keep"))?;
    let seen = inner.vote.map(|v| v.leader_id().term).unwrap_or(0);
    let term = seen.max(last.leader_id.term) + 1;
    let nodes = BTreeMap::from([(id, openraft::BasicNode { addr })]);
    let membership = openraft::Membership::new(vec![std::collections::BTreeSet::from([id])], nodes);
    let entry = Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(term, id), last.index + 1),
        payload: openraft::EntryPayload::Membership(membership),
    };
    let vote = Vote::new(term, id);
    let bytes = serde_json::to_vec(&vote).map_err(io::Error::other)?;
    write_atomic(&inner.dir.join(VOTE_FILE), &bytes, true)?;
    inner.vote = Some(vote);
    let log_id = entry.log_id;
    inner.write_records(
        &[Record::Entry {
            entry: entry.clone(),
        }],
        &store.fsync,
    )?;
    inner.entries.insert(log_id.index, entry);
    Ok(log_id)
}

impl Inner {
    fn write_records(&mut self, records: &[Record], fsync: &LatencyHistogram) -> io::Result<()> {
        self.write_records_unsynced(records)?;
        let started = Instant::now();
        self.file.sync_data()?;
        fsync.observe(started.elapsed());
        Ok(())
    }

    /// Appends `records` without waiting for the disk (the caller makes them durable).
    /// The caller applies them to the in-memory log, then calls [`Self::maybe_compact`]
    /// (a compaction writes the in-memory log: before that, it would drop them).
    fn write_records_unsynced(&mut self, records: &[Record]) -> io::Result<()> {
        let mut buf = Vec::new();
        for r in records {
            buf.extend(sealed_line(&self.key, r)?);
        }
        self.file.write_all(&buf)?;
        self.records += records.len();
        Ok(())
    }

    /// Rewrites the file with only the live records once dead ones dominate; durable
    /// (fsynced, renamed, directory fsynced) before it returns.
    fn maybe_compact(&mut self) -> io::Result<()> {
        if self.records <= 2 * self.entries.len() + 1024 {
            return Ok(());
        }
        let path = self.dir.join(LOG_FILE);
        let tmp = path.with_extension("sealed.tmp");
        {
            let mut w = BufWriter::new(private_fs::create(&tmp)?);
            let mut n = 0;
            if let Some(upto) = self.last_purged {
                w.write_all(&sealed_line(&self.key, &Record::Purge { upto })?)?;
                n += 1;
            }
            for entry in self.entries.values() {
                let record = Record::Entry {
                    entry: entry.clone(),
                };
                w.write_all(&sealed_line(&self.key, &record)?)?;
                n += 1;
            }
            let f = w.into_inner().map_err(|e| e.into_error())?;
            f.sync_all()?;
            self.records = n;
        }
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        self.file = private_fs::open_append(&path)?;
        Ok(())
    }

    fn get_range<RB: RangeBounds<u64>>(&self, range: RB) -> Vec<Entry<TypeConfig>> {
        let start = match range.start_bound() {
            Bound::Included(&s) => Bound::Included(s),
            Bound::Excluded(&s) => Bound::Excluded(s),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => Bound::Included(e),
            Bound::Excluded(&e) => Bound::Excluded(e),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.entries
            .range((start, end))
            .map(|(_, e)| e.clone())
            .collect()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<RaftId>> {
        Ok(self.lock().get_range(range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<RaftId>> {
        let inner = self.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| *e.get_log_id())
            .or(inner.last_purged);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftId>) -> Result<(), StorageError<RaftId>> {
        let mut inner = self.lock();
        let path = inner.dir.join(VOTE_FILE);
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        let started = Instant::now();
        write_atomic(&path, &bytes, true).map_err(|e| StorageIOError::write_vote(&e))?;
        self.fsync.observe(started.elapsed());
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<RaftId>>, StorageError<RaftId>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<RaftId>>,
    ) -> Result<(), StorageError<RaftId>> {
        let mut inner = self.lock();
        if inner.committed == committed {
            return Ok(());
        }
        let path = inner.dir.join(COMMITTED_FILE);
        let bytes = serde_json::to_vec(&committed).map_err(|e| StorageIOError::write(&e))?;
        write_atomic(&path, &bytes, false).map_err(|e| StorageIOError::write(&e))?;
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<RaftId>>, StorageError<RaftId>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<RaftId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        self.append_entries(entries, Box::new(move |r| callback.log_io_completed(r)))
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn truncate(&mut self, log_id: LogId<RaftId>) -> Result<(), StorageError<RaftId>> {
        let fsync = self.fsync.clone();
        let mut inner = self.lock();
        inner
            .write_records(&[Record::Truncate { from: log_id.index }], &fsync)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        inner.entries.split_off(&log_id.index);
        inner
            .maybe_compact()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<RaftId>) -> Result<(), StorageError<RaftId>> {
        let fsync = self.fsync.clone();
        let mut inner = self.lock();
        inner
            .write_records(&[Record::Purge { upto: log_id }], &fsync)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        let kept = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = kept;
        inner.last_purged = Some(log_id);
        inner
            .maybe_compact()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::Command;
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Command::RemoveService {
                id: format!("s{index}"),
            }),
        }
    }

    fn membership_entry(term: u64, index: u64) -> Entry<TypeConfig> {
        let nodes: BTreeMap<RaftId, openraft::BasicNode> = [1, 2, 3]
            .map(|id| (id, openraft::BasicNode::new(format!("h{id}:2377"))))
            .into();
        let voters = std::collections::BTreeSet::from([1, 2, 3]);
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Membership(openraft::Membership::new(vec![voters], nodes)),
        }
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "shoal-store-log-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    /// The indexes of the entries in `range`, as openraft reads them.
    async fn indexes<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        s: &mut LogStore,
        range: RB,
    ) -> Vec<u64> {
        s.try_get_log_entries(range)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    /// Appends through the path openraft's `append` takes, waiting until the entries
    /// are durable.
    fn append(store: &LogStore, entries: Vec<Entry<TypeConfig>>) {
        let (tx, rx) = std::sync::mpsc::channel();
        store
            .append_entries(entries, Box::new(move |r| tx.send(r.is_ok()).unwrap()))
            .unwrap();
        assert!(rx.recv_timeout(std::time::Duration::from_secs(30)).unwrap());
    }

    /// Entries appended while a compaction comes due are in the rewritten file: a
    /// compaction before they were in the in-memory log would drop them. A window of
    /// live entries slides (one appended, the oldest purged) until dead records pass the
    /// compaction's bound, for both parities of the live count; right after the first
    /// compaction the reopened log is the in-memory one.
    #[tokio::test]
    async fn entries_appended_when_a_compaction_comes_due_survive_a_restart() {
        for live in [10u64, 11] {
            let dir = tempdir(&format!("compact-append-{live}"));
            let key = DataKey::generate();
            let mut s = LogStore::open(&dir, &key).unwrap();
            append(&s, (1..=live).map(|i| entry(1, i)).collect());
            let mut next = live + 1;
            loop {
                let before = s.lock().records;
                append(&s, vec![entry(1, next)]);
                s.purge(LogId::new(CommittedLeaderId::new(1, 1), next - live))
                    .await
                    .unwrap();
                next += 1;
                if s.lock().records < before {
                    break;
                }
                assert!(next < 5_000, "no compaction came due");
            }
            let held: Vec<u64> = s.lock().entries.keys().copied().collect();
            drop(s);
            let mut s = LogStore::open(&dir, &key).unwrap();
            let got = indexes(&mut s, ..).await;
            assert_eq!(got, held, "live {live}");
            fs::remove_dir_all(&dir).unwrap();
        }
    }

    fn secret_entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::SetTokens {
                tokens: serde_json::json!({"manager": "SWMTKN-1-topsecretvalue"}),
            }),
        }
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[tokio::test]
    async fn log_vote_truncate_and_purge_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = tempdir("reopen");
        let key = DataKey::generate();
        let mut s = LogStore::open(&dir, &key).unwrap();
        append(&s, vec![membership_entry(1, 1)]);
        append(&s, (2..=10).map(|i| entry(1, i)).collect());
        s.truncate(LogId::new(CommittedLeaderId::new(1, 1), 8))
            .await
            .unwrap();
        append(&s, vec![entry(2, 8)]);
        s.purge(LogId::new(CommittedLeaderId::new(1, 1), 3))
            .await
            .unwrap();
        let vote = Vote::new(2, 3);
        s.save_vote(&vote).await.unwrap();
        drop(s);

        // A crash in the middle of the next append: part of a line, no newline.
        let line = sealed_line(&key, &Record::Entry { entry: entry(2, 9) }).unwrap();
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(dir.join(LOG_FILE))
            .unwrap();
        f.write_all(&line[..line.len() / 2]).unwrap();
        drop(f);

        let mut s = LogStore::open(&dir, &key).unwrap();
        assert_eq!(s.read_vote().await.unwrap(), Some(vote));
        let state = s.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.unwrap().index, 3);
        assert_eq!(state.last_log_id.unwrap().index, 8);
        assert_eq!(state.last_log_id.unwrap().leader_id.term, 2);
        let got = indexes(&mut s, 0..100).await;
        assert_eq!(got, vec![4, 5, 6, 7, 8]);
        // Member IDs are map keys: they survive JSON (string keys) and the reopen.
        let first = s.try_get_log_entries(1..2).await.unwrap();
        assert!(first.is_empty(), "purged");
        // Appending after the cut tail works and survives another reopen.
        append(&s, vec![entry(2, 9)]);
        drop(s);
        let mut s = LogStore::open(&dir, &key).unwrap();
        assert_eq!(
            s.get_log_state().await.unwrap().last_log_id.unwrap().index,
            9
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_whole_line_that_does_not_open_refuses_to_open() {
        let dir = tempdir("corrupt");
        let key = DataKey::generate();
        let s = LogStore::open(&dir, &key).unwrap();
        append(&s, vec![entry(1, 1)]);
        drop(s);
        // Another data key: not one record opens, and nothing is cut.
        let before = fs::read(dir.join(LOG_FILE)).unwrap();
        let e = LogStore::open(&dir, &DataKey::generate()).err().unwrap();
        assert!(e.to_string().contains("another data key"), "{e}");
        assert_eq!(fs::read(dir.join(LOG_FILE)).unwrap(), before);
        // A damaged whole line, last or not, is corruption, not a torn write.
        let path = dir.join(LOG_FILE);
        let mut text = fs::read_to_string(&path).unwrap();
        text.push_str("Z2FyYmFnZQ\n");
        fs::write(&path, &text).unwrap();
        assert!(LogStore::open(&dir, &key).is_err());
        text.insert_str(0, "Z2FyYmFnZQ\n");
        fs::write(&path, &text).unwrap();
        assert!(LogStore::open(&dir, &key).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn the_log_holds_no_plaintext_and_is_owner_only() {
        let dir = tempdir("sealed");
        let key = DataKey::generate();
        let mut s = LogStore::open(&dir, &key).unwrap();
        append(&s, vec![secret_entry(1)]);
        s.save_vote(&Vote::new(1, 1)).await.unwrap();
        s.save_committed(Some(LogId::new(CommittedLeaderId::new(1, 1), 1)))
            .await
            .unwrap();
        drop(s);
        assert!(!contains(
            &fs::read(dir.join(LOG_FILE)).unwrap(),
            "topsecretvalue"
        ));
        assert_eq!(mode(&dir), 0o700);
        for file in [LOG_FILE, VOTE_FILE, COMMITTED_FILE] {
            assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
        }
        let mut s = LogStore::open(&dir, &key).unwrap();
        let got = s.try_get_log_entries(..).await.unwrap();
        assert_eq!(got.len(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn an_older_plain_log_is_sealed_at_open() {
        let dir = tempdir("plain");
        fs::create_dir_all(&dir).unwrap();
        let mut plain = Vec::new();
        for r in [
            Record::Entry {
                entry: membership_entry(1, 1),
            },
            Record::Entry {
                entry: secret_entry(2),
            },
            Record::Purge {
                upto: LogId::new(CommittedLeaderId::new(1, 1), 1),
            },
        ] {
            serde_json::to_writer(&mut plain, &r).unwrap();
            plain.push(b'\n');
        }
        // The old reader's torn tail, dropped as it dropped it.
        plain.extend_from_slice(b"{\"entry\":{\"ent");
        fs::write(dir.join(PLAIN_LOG_FILE), &plain).unwrap();
        let key = DataKey::generate();
        let mut s = LogStore::open(&dir, &key).unwrap();
        assert!(!dir.join(PLAIN_LOG_FILE).exists());
        assert!(!contains(
            &fs::read(dir.join(LOG_FILE)).unwrap(),
            "topsecretvalue"
        ));
        assert_eq!(mode(&dir.join(LOG_FILE)), 0o600);
        let got = indexes(&mut s, ..).await;
        assert_eq!(got, vec![2]);
        assert_eq!(
            s.get_log_state()
                .await
                .unwrap()
                .last_purged_log_id
                .unwrap()
                .index,
            1
        );
        // A crash after the sealed file was renamed in, before the plain one went.
        drop(s);
        fs::write(dir.join(PLAIN_LOG_FILE), b"{}\n").unwrap();
        let mut s = LogStore::open(&dir, &key).unwrap();
        assert!(!dir.join(PLAIN_LOG_FILE).exists());
        assert_eq!(s.try_get_log_entries(..).await.unwrap().len(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn many_dead_records_are_compacted_away() {
        let dir = tempdir("compact");
        let key = DataKey::generate();
        let mut s = LogStore::open(&dir, &key).unwrap();
        for round in 0..30u64 {
            let base = round * 100;
            append(&s, (base + 1..=base + 100).map(|i| entry(1, i)).collect());
            s.purge(LogId::new(CommittedLeaderId::new(1, 1), base + 95))
                .await
                .unwrap();
        }
        assert!(s.lock().records < 1100, "{}", s.lock().records);
        drop(s);
        assert_eq!(mode(&dir.join(LOG_FILE)), 0o600, "the rewritten file too");
        let mut s = LogStore::open(&dir, &key).unwrap();
        let got = indexes(&mut s, ..).await;
        assert_eq!(got, (2996..=3000).collect::<Vec<_>>());
        assert_eq!(
            s.get_log_state()
                .await
                .unwrap()
                .last_purged_log_id
                .unwrap()
                .index,
            2995
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
