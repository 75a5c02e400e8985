//! Crash tests: a child process killed with SIGKILL mid-write, and simulated loss of unsynced
//! page cache. Both assert that everything reported durable survives recovery bit for bit.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use rand::Rng;

use super::tests::{batch_entry, raft_entry};
use super::*;

const CHILD_ENV: &str = "SLUICE_STORAGE_CRASH_CHILD_DIR";
const CHILD_TEST: &str = "log::crash_tests::crash_child_process";

fn crash_config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024,
        segment_ms: None,
        index_interval_bytes: 512,
        fsync: FsyncPolicy::Always,
    }
}

/// Entry `index` is fully determined by its index, so any survivor can be checked.
fn is_raft(index: u64) -> bool {
    index % 7 == 0
}
fn records(index: u64) -> i32 {
    1 + (index % 4) as i32
}
fn expected_entry(index: u64, base_offset: i64) -> Entry {
    let term = 1 + index / 50;
    if is_raft(index) {
        raft_entry(term, index)
    } else {
        batch_entry(
            term,
            index,
            base_offset,
            records(index),
            index as i64,
            (index as usize * 37) % 300,
        )
    }
}
/// Offset before entry `index` (entries start at index 1, offset 0).
fn offset_before(index: u64) -> i64 {
    (1..index)
        .filter(|&i| !is_raft(i))
        .map(|i| records(i) as i64)
        .sum()
}

/// Child mode: appends groups forever, printing each durable index after its sync.
/// A no-op in normal test runs.
#[test]
fn crash_child_process() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let log = PartitionLog::open(Path::new(&dir), crash_config()).expect("child open");
    let mut rng = rand::thread_rng();
    let mut out = std::io::stdout().lock();
    let mut index = log.last_index() + 1;
    let mut offset = log.next_offset();
    for _ in 0..1_000_000 {
        let n = rng.gen_range(1..8);
        let mut group = Vec::new();
        for _ in 0..n {
            let e = expected_entry(index, offset);
            if e.kind == EntryKind::Batch {
                offset += records(index) as i64;
            }
            index += 1;
            group.push(e);
        }
        log.append(&group).expect("child append");
        let durable = log.sync().expect("child sync");
        writeln!(out, "SYNCED {durable}").expect("stdout");
        out.flush().expect("flush");
    }
}

fn verify_prefix(dir: &Path, synced: u64) -> u64 {
    let log = PartitionLog::open(dir, crash_config()).expect("reopen after crash");
    let last = log.last_index();
    assert!(
        last >= synced,
        "lost synced entries: last {last} < synced {synced}"
    );
    let mut offset = 0;
    let mut from = 1;
    while from <= last {
        let to = (from + 200).min(last + 1);
        for e in log.entries(from, to, usize::MAX).expect("entries") {
            let want = expected_entry(e.index, offset);
            assert_eq!(e, want, "entry {} differs", e.index);
            if e.kind == EntryKind::Batch {
                offset += records(e.index) as i64;
            }
        }
        from = to;
    }
    assert_eq!(log.next_offset(), offset);
    assert_eq!(offset, offset_before(last + 1));
    last
}

#[test]
fn sigkill_during_appends_loses_nothing_synced() {
    let dir = tempfile::tempdir().expect("tmp");
    let exe = std::env::current_exe().expect("test binary");
    let mut rng = rand::thread_rng();
    let mut max_synced = 0u64;
    for round in 0..6 {
        let mut child = Command::new(&exe)
            .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped");
        let seen = Arc::new(StdMutex::new(0u64));
        let reader = {
            let seen = seen.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(n) = line.strip_prefix("SYNCED ") {
                        let n: u64 = n.trim().parse().expect("number");
                        let mut s = seen.lock().expect("lock");
                        *s = (*s).max(n);
                    }
                }
            })
        };
        // Wait until the child is writing, then kill it at a random moment.
        let start = std::time::Instant::now();
        while *seen.lock().expect("lock") <= max_synced && start.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..150)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        reader.join().expect("reader");
        let synced = *seen.lock().expect("lock");
        assert!(synced > max_synced, "round {round}: child made no progress");
        max_synced = synced;
        let last = verify_prefix(dir.path(), synced);
        assert!(last >= max_synced);
    }
    let log = PartitionLog::open(dir.path(), crash_config()).expect("open");
    assert!(log.segment_count() > 1, "test should cover rolls");
}

#[test]
fn lost_page_cache_after_sync_keeps_synced_entries() {
    let mut rng = rand::thread_rng();
    for round in 0..20 {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = LogConfig {
            segment_bytes: 1 << 20,
            ..crash_config()
        };
        let log = PartitionLog::open(dir.path(), cfg.clone()).expect("open");
        let mut index = 1;
        let mut offset = 0;
        let mut append = |log: &PartitionLog, n: u64| {
            let mut group = Vec::new();
            for _ in 0..n {
                let e = expected_entry(index, offset);
                if e.kind == EntryKind::Batch {
                    offset += records(index) as i64;
                }
                index += 1;
                group.push(e);
            }
            log.append(&group).expect("append");
        };
        append(&log, rng.gen_range(1..40));
        let synced = log.sync().expect("sync");
        let path = dir.path().join(log_name(0));
        let synced_len = fs::metadata(&path).expect("md").len();
        append(&log, rng.gen_range(1..40));
        drop(log);
        // The machine crashes: some suffix of the unsynced writes never reached the disk.
        let len = fs::metadata(&path).expect("md").len();
        let cut = rng.gen_range(synced_len..=len);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open")
            .set_len(cut)
            .expect("cut");
        let last = verify_prefix(dir.path(), synced);
        assert!(last >= synced, "round {round}");
    }
}
