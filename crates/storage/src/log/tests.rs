//! Unit tests of the partition log.

use std::fs;
use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::batch::testutil::build_batch;

pub(super) fn small_config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        segment_ms: None,
        index_interval_bytes: 256,
        fsync: FsyncPolicy::Always,
    }
}

pub(super) fn batch_entry(
    term: u64,
    index: u64,
    base: i64,
    records: i32,
    ts: i64,
    value_len: usize,
) -> Entry {
    Entry {
        term,
        index,
        kind: EntryKind::Batch,
        payload: Bytes::from(build_batch(base, records, ts, value_len, index)),
    }
}

pub(super) fn raft_entry(term: u64, index: u64) -> Entry {
    Entry {
        term,
        index,
        kind: EntryKind::Raft,
        payload: Bytes::from(format!("raft-{term}-{index}")),
    }
}

/// Appends `n` batches of `records` records (timestamps `ts0 + 10*i`), one entry each.
fn append_batches(log: &PartitionLog, n: usize, records: i32, ts0: i64) -> Vec<Entry> {
    let mut out = Vec::new();
    for i in 0..n {
        let index = log.last_index() + 1;
        let e = batch_entry(
            1,
            index,
            log.next_offset(),
            records,
            ts0 + 10 * i as i64,
            40,
        );
        log.append(std::slice::from_ref(&e)).expect("append");
        out.push(e);
    }
    out
}

fn concat(entries: &[&Entry]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|e| e.payload.iter().copied())
        .collect()
}

fn open(dir: &std::path::Path, seg: u64) -> PartitionLog {
    PartitionLog::open(dir, small_config(seg)).expect("open")
}

#[test]
fn append_and_read_across_segment_rolls() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(dir.path(), 1000);
    let es = append_batches(&log, 40, 3, 1000);
    assert!(log.segment_count() > 5, "rolled: {}", log.segment_count());
    assert_eq!(log.next_offset(), 120);
    assert_eq!(log.last_index(), 40);
    let all: Vec<&Entry> = es.iter().collect();
    let r = log.read(0, usize::MAX, i64::MAX).expect("read");
    assert_eq!(r.data.as_ref(), concat(&all).as_slice());
    assert_eq!((r.first_offset, r.next_offset), (0, 120));
    // From every offset the read starts with the containing batch.
    for off in 0..120 {
        let r = log.read(off, usize::MAX, 120).expect("read");
        let k = (off / 3) as usize;
        assert_eq!(r.first_offset, 3 * k as i64);
        assert_eq!(r.data.as_ref(), concat(&all[k..]).as_slice());
    }
    let sizes: u64 = fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|d| d.ok())
        .filter(|d| d.file_name().to_string_lossy().ends_with(".log"))
        .map(|d| d.metadata().expect("md").len())
        .sum();
    assert_eq!(log.size_bytes(), sizes);
}

#[test]
fn read_from_mid_batch_offset_returns_containing_batch() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(dir.path(), 1 << 20);
    let es = append_batches(&log, 3, 5, 0);
    let r = log.read(7, usize::MAX, i64::MAX).expect("read");
    assert_eq!(r.first_offset, 5);
    assert_eq!(r.data.as_ref(), concat(&[&es[1], &es[2]]).as_slice());
    assert_eq!(r.next_offset, 15);
}

#[test]
fn first_batch_is_returned_whole_even_if_larger_than_max_bytes() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(dir.path(), 1 << 20);
    let es = append_batches(&log, 3, 2, 0);
    let r = log.read(0, 10, i64::MAX).expect("read");
    assert_eq!(r.data, es[0].payload);
    assert_eq!(r.next_offset, 2);
    let two = es[0].payload.len() + es[1].payload.len();
    let r = log.read(0, two - 1, i64::MAX).expect("read");
    assert_eq!(r.data, es[0].payload);
    let r = log.read(0, two, i64::MAX).expect("read");
    assert_eq!(r.data.as_ref(), concat(&[&es[0], &es[1]]).as_slice());
}

#[test]
fn upper_offset_is_respected() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(dir.path(), 700);
    let es = append_batches(&log, 10, 4, 0);
    // Upper at a batch boundary.
    let r = log.read(0, usize::MAX, 12).expect("read");
    assert_eq!(
        r.data.as_ref(),
        concat(&[&es[0], &es[1], &es[2]]).as_slice()
    );
    assert_eq!(r.next_offset, 12);
    // Upper inside a batch excludes it.
    let r = log.read(0, usize::MAX, 14).expect("read");
    assert_eq!(r.next_offset, 12);
    // At or beyond upper: empty.
    let r = log.read(12, usize::MAX, 12).expect("read");
    assert!(r.data.is_empty());
    assert_eq!((r.first_offset, r.next_offset), (12, 12));
    let r = log.read(40, usize::MAX, i64::MAX).expect("read at end");
    assert!(r.data.is_empty());
    assert!(matches!(
        log.read(41, 100, i64::MAX),
        Err(Error::OffsetOutOfRange { .. })
    ));
}

#[test]
fn raft_entries_are_invisible_to_kafka_reads() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(dir.path(), 600);
    let mut all = Vec::new();
    let mut off = 0;
    for i in 1..=30u64 {
        let e = if i % 3 == 1 {
            raft_entry(i / 10 + 1, i)
        } else {
            let e = batch_entry(i / 10 + 1, i, off, 2, i as i64, 30);
            off += 2;
            e
        };
        all.push(e);
    }
    log.append(&all[..10]).expect("append");
    log.append(&all[10..]).expect("append");
    let batches: Vec<&Entry> = all.iter().filter(|e| e.kind == EntryKind::Batch).collect();
    let r = log.read(0, usize::MAX, i64::MAX).expect("read");
    assert_eq!(r.data.as_ref(), concat(&batches).as_slice());
    assert_eq!(log.next_offset(), 40);
    // Raft sees everything.
    assert_eq!(log.entries(1, 31, usize::MAX).expect("entries"), all);
    assert_eq!(
        log.entries(5, 9, usize::MAX).expect("entries"),
        all[4..8].to_vec()
    );
    // max_bytes: at least one entry, then stop before exceeding.
    assert_eq!(log.entries(2, 31, 0).expect("entries"), all[1..2].to_vec());
    assert!(matches!(
        log.entries(0, 5, 10),
        Err(Error::IndexOutOfRange { .. })
    ));
    assert!(matches!(
        log.entries(1, 32, 10),
        Err(Error::IndexOutOfRange { .. })
    ));
    for e in &all {
        assert_eq!(log.term_of(e.index), Some(e.term));
    }
    assert_eq!(log.term_of(31), None);
    // offset_for_index: offset after the entry.
    let mut next = 0;
    for e in &all {
        if e.kind == EntryKind::Batch {
            next += 2;
        }
        assert_eq!(
            log.offset_for_index(e.index).expect("ok"),
            Some(next),
            "index {}",
            e.index
        );
    }
}

#[test]
fn append_rejects_discontinuities() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(dir.path(), 1 << 20);
    // An empty log accepts any first index >= 1.
    log.append(&[batch_entry(3, 100, 0, 2, 0, 5)])
        .expect("first");
    let bad = [
        batch_entry(3, 102, 2, 1, 0, 5), // index gap
        batch_entry(3, 100, 2, 1, 0, 5), // index repeat
        batch_entry(2, 101, 2, 1, 0, 5), // term goes back
        batch_entry(3, 101, 5, 1, 0, 5), // offset gap
        batch_entry(3, 101, 0, 1, 0, 5), // offset reuse
    ];
    for b in &bad {
        assert!(
            matches!(
                log.append(std::slice::from_ref(b)),
                Err(Error::InvalidAppend(_))
            ),
            "{b:?}"
        );
    }
    let mut garbage = raft_entry(3, 101);
    garbage.kind = EntryKind::Batch;
    assert!(matches!(
        log.append(&[garbage]),
        Err(Error::InvalidAppend(_))
    ));
    // A bad entry in a group rejects the whole group.
    assert!(log
        .append(&[
            batch_entry(3, 101, 2, 1, 0, 5),
            batch_entry(3, 103, 3, 1, 0, 5)
        ])
        .is_err());
    assert_eq!(log.last_index(), 100);
    assert_eq!(log.next_offset(), 2);
    let info = log.append(&[batch_entry(4, 101, 2, 1, 0, 5)]).expect("ok");
    assert_eq!(
        info,
        AppendInfo {
            last_index: 101,
            last_term: 4,
            next_offset: 3
        }
    );
    assert_eq!(log.first_index(), 100);
}

#[test]
fn truncate_suffix_then_append_continues_with_correct_offsets() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(dir.path(), 700);
    let es = append_batches(&log, 30, 3, 0);
    let segs = log.segment_count();
    assert!(segs > 3);
    log.truncate_suffix(12).expect("truncate");
    assert!(log.segment_count() < segs);
    assert_eq!(log.last_index(), 11);
    assert_eq!(log.next_offset(), 33);
    assert_eq!(log.durable_index(), 11);
    let r = log.read(0, usize::MAX, i64::MAX).expect("read");
    assert_eq!(
        r.data.as_ref(),
        concat(&es[..11].iter().collect::<Vec<_>>()).as_slice()
    );
    // New term's entries continue from offset 33.
    let mut fresh = vec![raft_entry(2, 12)];
    let mut off = 33;
    for i in 13..20 {
        fresh.push(batch_entry(2, i, off, 2, 500, 30));
        off += 2;
    }
    let info = log.append(&fresh).expect("append");
    assert_eq!(info.next_offset, 47);
    for reopen_clean in [false, true] {
        if reopen_clean {
            log.close().expect("close");
        }
        let log = open(dir.path(), 700);
        assert_eq!(log.last_index(), 19);
        assert_eq!(log.next_offset(), 47);
        let mut expect: Vec<Entry> = es[..11].to_vec();
        expect.extend(fresh.iter().cloned());
        assert_eq!(log.entries(1, 20, usize::MAX).expect("entries"), expect);
        assert_eq!(log.term_of(12), Some(2));
        assert_eq!(log.term_of(11), Some(1));
    }
    drop(log);
    // Truncating everything leaves an empty log that keeps its offsets.
    let log = open(dir.path(), 700);
    log.truncate_suffix(1).expect("truncate all");
    assert_eq!((log.first_index(), log.last_index()), (0, 0));
    assert_eq!(log.next_offset(), 0);
    assert_eq!(log.segment_count(), 1);
    log.append(&[batch_entry(5, 1, 0, 1, 0, 1)])
        .expect("append after emptying");
}

#[test]
fn purge_prefix_deletes_whole_segments_only() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(dir.path(), 700);
    append_batches(&log, 30, 3, 0);
    let segs = log.segment_count();
    assert_eq!(log.purge_prefix(0).expect("purge"), 0);
    let removed = log.purge_prefix(10).expect("purge");
    assert!(removed >= 1);
    let first = log.first_index();
    assert!(first <= 11 && first > 1, "first {first}");
    assert_eq!(log.log_start_offset(), (first as i64 - 1) * 3);
    assert!(matches!(
        log.read(0, 10, i64::MAX),
        Err(Error::OffsetOutOfRange { .. })
    ));
    assert_eq!(
        log.entries(first, first + 1, 0).expect("entries")[0].index,
        first
    );
    assert_eq!(log.term_of(first - 1), None);
    // Purging everything keeps the active segment.
    log.purge_prefix(u64::MAX).expect("purge");
    assert_eq!(log.segment_count(), 1);
    assert!(segs > 1);
    assert_eq!(log.last_index(), 30);
    drop(log);
    let log = open(dir.path(), 700);
    assert_eq!(log.last_index(), 30);
    assert_eq!(log.log_start_offset(), (log.first_index() as i64 - 1) * 3);
}

#[test]
fn delete_records_before_moves_log_start_durably() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(dir.path(), 700);
    let es = append_batches(&log, 30, 3, 0);
    let segs = log.segment_count();
    assert_eq!(log.delete_records_before(31).expect("delete"), 31);
    assert!(log.segment_count() < segs);
    assert!(matches!(
        log.read(30, 10, i64::MAX),
        Err(Error::OffsetOutOfRange { .. })
    ));
    let r = log.read(31, 1, i64::MAX).expect("read");
    assert_eq!(r.data, es[10].payload);
    assert_eq!(log.delete_records_before(5).expect("no-op"), 31);
    assert!(log.delete_records_before(1000).is_err());
    drop(log);
    let log = open(dir.path(), 700);
    assert_eq!(log.log_start_offset(), 31);
    assert_eq!(
        log.read(31, 1, i64::MAX).expect("read").data,
        es[10].payload
    );
}

#[test]
fn time_index_lookups_match_a_scan() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = PartitionLog::open(
        dir.path(),
        LogConfig {
            index_interval_bytes: 100,
            ..small_config(1500)
        },
    )
    .expect("open");
    // Timestamps mostly rising with some going backwards.
    let mut es = Vec::new();
    for i in 0..60u64 {
        let ts = 1000 + (i as i64 * 37) % 500 + i as i64 * 10;
        let e = batch_entry(1, i + 1, log.next_offset(), 2, ts, 30);
        log.append(std::slice::from_ref(&e)).expect("append");
        es.push(e);
    }
    let check = |log: &PartitionLog| {
        let upper = log.next_offset() - 10;
        for ts in (900..2200).step_by(7) {
            let expect = es
                .iter()
                .map(|e| BatchHeader::parse(&e.payload).expect("b"))
                .filter(|h| h.last_offset() < upper)
                .find(|h| h.max_timestamp >= ts)
                .map(|h| h.base_offset);
            let got = log.find_offset_by_timestamp(ts, upper).expect("lookup");
            let got = got.map(|b| BatchHeader::parse(&b).expect("b").base_offset);
            assert_eq!(got, expect, "ts {ts}");
        }
        let best = es
            .iter()
            .map(|e| BatchHeader::parse(&e.payload).expect("b"))
            .filter(|h| h.last_offset() < upper)
            .fold(None::<BatchHeader>, |b, h| match b {
                Some(b) if b.max_timestamp >= h.max_timestamp => Some(b),
                _ => Some(h),
            })
            .expect("some");
        let (ts, batch) = log.max_timestamp(upper).expect("max").expect("some");
        assert_eq!(ts, best.max_timestamp);
        assert_eq!(
            BatchHeader::parse(&batch).expect("b").base_offset,
            best.base_offset
        );
    };
    check(&log);
    log.close().expect("close");
    let log = PartitionLog::open(dir.path(), small_config(1500)).expect("reopen");
    check(&log);
    assert_eq!(
        log.find_offset_by_timestamp(i64::MAX, i64::MAX).expect("x"),
        None
    );
}

#[test]
fn retention_by_time_and_by_size() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(dir.path(), 700);
    // Batches with timestamps 0, 10, 20, ...
    append_batches(&log, 40, 2, 0);
    let segs = log.segment_count();
    let next = log.next_offset();
    // Nothing is old enough.
    assert_eq!(
        log.enforce_retention(100, Some(1000), None, next)
            .expect("ret"),
        0
    );
    // Everything below ts 150 expired: segments whose max ts < 150 go.
    let n = log
        .enforce_retention(1150, Some(1000), None, next)
        .expect("ret");
    assert!(n >= 1);
    let start = log.log_start_offset();
    let r = log.read(start, 1, i64::MAX).expect("read");
    let h = BatchHeader::parse(&r.data).expect("batch");
    // The first remaining segment holds a batch at or past the cut-off.
    let first_max = log.max_timestamp(next).expect("m").expect("some").0;
    assert!(first_max >= 150);
    assert!(h.base_offset == start);
    // Upper bound protects data: nothing at/after it is deleted.
    let before = log.segment_count();
    assert_eq!(
        log.enforce_retention(i64::MAX, Some(0), None, start)
            .expect("ret"),
        0
    );
    assert_eq!(log.segment_count(), before);
    // Size: keep at most ~1500 bytes; the active segment always stays.
    let n = log
        .enforce_retention(0, None, Some(1500), next)
        .expect("ret");
    assert!(n >= 1);
    assert!(log.size_bytes() <= 1500 + 700);
    assert!(log.segment_count() < segs);
    let before = log.segment_count();
    assert_eq!(
        log.enforce_retention(i64::MAX, Some(0), Some(0), next)
            .expect("ret"),
        before - 1
    );
    assert_eq!(log.segment_count(), 1);
}

fn all_files_with(dir: &std::path::Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .expect("ls")
        .filter_map(|d| d.ok())
        .map(|d| d.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

#[test]
fn damaged_index_files_are_rebuilt() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(dir.path(), 2000);
    let es = append_batches(&log, 60, 3, 0);
    let before: Vec<_> = (0..180)
        .step_by(5)
        .map(|o| log.read(o, 300, i64::MAX).expect("r"))
        .collect();
    let ts_before: Vec<_> = (0..700)
        .step_by(13)
        .map(|t| log.find_offset_by_timestamp(t, i64::MAX).expect("t"))
        .collect();
    log.close().expect("close");
    let idx = all_files_with(dir.path(), "index");
    let tix = all_files_with(dir.path(), "timeindex");
    let seg = all_files_with(dir.path(), "seg");
    assert!(idx.len() >= 4);
    fs::remove_file(&idx[0]).expect("rm");
    fs::write(&idx[1], [0xffu8; 24]).expect("garbage");
    let mut t = fs::read(&tix[2]).expect("read");
    t.truncate(t.len().saturating_sub(5));
    fs::write(&tix[2], t).expect("truncate");
    let mut s = fs::read(&seg[3]).expect("read");
    s[20] ^= 0x40;
    fs::write(&seg[3], s).expect("flip");
    // Non-monotonic index that still matches its (rewritten) .seg would also be caught by
    // the structural check; the last one is the active segment's.
    for reopen in 0..2 {
        let log = open(dir.path(), 2000);
        let after: Vec<_> = (0..180)
            .step_by(5)
            .map(|o| log.read(o, 300, i64::MAX).expect("r"))
            .collect();
        let ts_after: Vec<_> = (0..700)
            .step_by(13)
            .map(|t| log.find_offset_by_timestamp(t, i64::MAX).expect("t"))
            .collect();
        assert_eq!(before, after, "reopen {reopen}");
        assert_eq!(ts_before, ts_after, "reopen {reopen}");
        assert_eq!(log.entries(1, 61, usize::MAX).expect("e"), es);
        log.close().expect("close");
    }
    // Rebuilt sealed segments got their files back.
    assert_eq!(all_files_with(dir.path(), "index").len(), idx.len());
}

fn last_log_file(dir: &std::path::Path) -> std::path::PathBuf {
    all_files_with(dir, "log").pop().expect("a segment")
}

#[test]
fn torn_tail_is_dropped_exactly() {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for round in 0..12 {
        let dir = tempfile::tempdir().expect("tmp");
        let log = open(dir.path(), 3000);
        let mut es = append_batches(&log, 25, 2, 0);
        es.push(raft_entry(2, 26));
        log.append(&es[25..]).expect("raft");
        es.push(batch_entry(2, 27, log.next_offset(), 3, 5, 100));
        log.append(&es[26..]).expect("last");
        let last_len = (FRAME_HEADER_LEN + es[26].payload.len()) as u64;
        drop(log);
        let path = last_log_file(dir.path());
        let len = fs::metadata(&path).expect("md").len();
        if round % 2 == 0 {
            // Cut inside the last frame.
            let cut = len - rng.gen_range(1..=last_len);
            let f = OpenOptions::new().write(true).open(&path).expect("open");
            f.set_len(cut).expect("cut");
        } else {
            // Flip a byte of the last frame (header or payload).
            let at = len - rng.gen_range(1..=last_len);
            let mut b = fs::read(&path).expect("read");
            b[at as usize] ^= 1 << rng.gen_range(0..8);
            fs::write(&path, b).expect("write");
        }
        let log = open(dir.path(), 3000);
        assert_eq!(log.last_index(), 26, "round {round}");
        assert_eq!(
            log.entries(1, 27, usize::MAX).expect("e"),
            es[..26].to_vec()
        );
        assert_eq!(fs::metadata(&path).expect("md").len(), len - last_len);
        assert_eq!(log.next_offset(), 50);
        log.append(&[batch_entry(2, 27, 50, 1, 0, 1)])
            .expect("continues");
    }
}

#[test]
fn garbage_after_a_sealed_segment_tear_drops_later_segments() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(dir.path(), 700);
    let es = append_batches(&log, 30, 3, 0);
    drop(log);
    let logs = all_files_with(dir.path(), "log");
    assert!(logs.len() > 3);
    // Corrupt the middle of segment 1 and remove its summary so it is scanned.
    let mut b = fs::read(&logs[1]).expect("read");
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    fs::write(&logs[1], b).expect("write");
    fs::remove_file(logs[1].with_extension("seg")).expect("rm seg");
    let log = open(dir.path(), 700);
    let last = log.last_index();
    assert!(last < 30);
    assert_eq!(
        log.entries(1, last + 1, usize::MAX).expect("e"),
        es[..last as usize].to_vec()
    );
    assert_eq!(log.segment_count(), 2);
}

#[test]
fn failed_fsync_poisons_the_log() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(dir.path(), 1 << 20);
    let es = append_batches(&log, 3, 1, 0);
    assert_eq!(log.sync().expect("sync"), 3);
    log.append(&[batch_entry(1, 4, 3, 1, 0, 1)])
        .expect("append");
    log.inject_fsync_failure();
    assert!(matches!(log.sync(), Err(Error::Io(_))));
    assert!(log.is_poisoned());
    assert_eq!(log.durable_index(), 3);
    assert!(matches!(log.sync(), Err(Error::Poisoned)));
    assert!(matches!(
        log.append(&[batch_entry(1, 5, 4, 1, 0, 1)]),
        Err(Error::Poisoned)
    ));
    assert!(matches!(log.truncate_suffix(2), Err(Error::Poisoned)));
    assert!(matches!(log.delete_records_before(1), Err(Error::Poisoned)));
    assert!(log.close().is_err());
    // Reads still work.
    assert_eq!(log.read(0, 1, i64::MAX).expect("read").data, es[0].payload);
}

#[test]
fn failed_fsync_during_roll_poisons_the_log() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(dir.path(), 500);
    append_batches(&log, 2, 2, 0);
    log.inject_fsync_failure();
    let mut err = None;
    for _ in 0..10 {
        let e = batch_entry(1, log.last_index() + 1, log.next_offset(), 2, 0, 40);
        if let Err(x) = log.append(&[e]) {
            err = Some(x);
            break;
        }
    }
    assert!(matches!(err, Some(Error::Io(_))));
    assert!(matches!(log.append(&[]), Err(Error::Poisoned)));
}

#[test]
fn age_based_roll() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = LogConfig {
        segment_ms: Some(1000),
        ..small_config(1 << 20)
    };
    let log = PartitionLog::open(dir.path(), cfg).expect("open");
    let t0 = log.inner.read().active().created_ms;
    log.append_at(&[batch_entry(1, 1, 0, 1, 0, 1)], t0 + 10)
        .expect("a");
    log.append_at(&[batch_entry(1, 2, 1, 1, 0, 1)], t0 + 500)
        .expect("a");
    assert_eq!(log.segment_count(), 1);
    log.append_at(&[batch_entry(1, 3, 2, 1, 0, 1)], t0 + 1000)
        .expect("a");
    assert_eq!(log.segment_count(), 2);
    assert!(!log.maybe_roll(t0 + 1500).expect("roll"));
    assert!(log.maybe_roll(t0 + 2000).expect("roll"));
    assert_eq!(log.segment_count(), 3);
    // An empty active segment is not rolled.
    assert!(!log.maybe_roll(t0 + 9000).expect("roll"));
    assert_eq!(log.read(0, usize::MAX, i64::MAX).expect("r").next_offset, 3);
}

#[test]
fn closed_log_refuses_writes_and_reopens_clean() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(dir.path(), 700);
    let es = append_batches(&log, 20, 1, 0);
    log.close().expect("close");
    assert!(dir.path().join(CLEAN_MARKER).exists());
    assert!(matches!(
        log.append(&[batch_entry(1, 21, 20, 1, 0, 1)]),
        Err(Error::Closed)
    ));
    drop(log);
    let log = open(dir.path(), 700);
    assert!(!dir.path().join(CLEAN_MARKER).exists());
    assert_eq!(log.entries(1, 21, usize::MAX).expect("e"), es);
    assert_eq!(log.durable_index(), 20);
    log.delete().expect("delete");
    assert!(!dir.path().exists());
}

#[test]
fn concurrent_readers_appender_and_syncer() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = Arc::new(open(dir.path(), 4000));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for _ in 0..2 {
        let (log, stop) = (log.clone(), stop.clone());
        handles.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let end = log.next_offset();
                let r = log.read(0, 2000, end).expect("read");
                for range in crate::batch::split_batches(&r.data) {
                    let (s, e) = range.expect("whole batches");
                    assert!(crate::batch::validate_crc(&r.data[s..e]));
                }
            }
        }));
    }
    {
        let (log, stop) = (log.clone(), stop.clone());
        handles.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                log.sync().expect("sync");
            }
        }));
    }
    append_batches(&log, 200, 2, 0);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("thread");
    }
    assert_eq!(log.sync().expect("sync"), 200);
}

#[test]
fn reset_starts_the_log_over_at_an_offset_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = open(dir.path(), 1000);
    append_batches(&log, 20, 3, 1000);
    assert!(log.segment_count() > 1);
    log.reset_to(500).expect("reset");
    assert_eq!(log.segment_count(), 1);
    assert_eq!((log.log_start_offset(), log.next_offset()), (500, 500));
    assert_eq!(log.last_index(), 0, "no entries");
    // Entries continue at any index, offsets at 500.
    let e = batch_entry(7, 91, 500, 2, 5_000, 10);
    log.append(std::slice::from_ref(&e))
        .expect("append after reset");
    log.sync().expect("sync");
    assert_eq!(
        (log.first_index(), log.last_index(), log.next_offset()),
        (91, 91, 502)
    );
    let r = log.read(500, usize::MAX, i64::MAX).expect("read");
    assert_eq!(r.data.as_ref(), e.payload.as_ref());
    assert!(matches!(
        log.read(10, usize::MAX, i64::MAX),
        Err(Error::OffsetOutOfRange { .. })
    ));
    drop(log);
    // Unclean reopen (no close): the same state comes back.
    let log = open(dir.path(), 1000);
    assert_eq!((log.log_start_offset(), log.next_offset()), (500, 502));
    assert_eq!((log.first_index(), log.last_index()), (91, 91));
    // And a reset to an empty log survives a reopen too.
    log.reset_to(900).expect("reset");
    log.close().expect("close");
    drop(log);
    let log = open(dir.path(), 1000);
    assert_eq!(
        (log.log_start_offset(), log.next_offset(), log.last_index()),
        (900, 900, 0)
    );
}
