//! Model-based property test: random appends, reads, truncations, purges, DeleteRecords and
//! restarts (clean and unclean) against a plain in-memory model.

use proptest::prelude::*;

use super::tests::{batch_entry, raft_entry};
use super::*;

#[derive(Debug, Clone)]
enum Op {
    /// (is_raft, records, value_len, timestamp) per entry; one append call.
    Append(Vec<(bool, i32, usize, i64)>),
    /// Timestamp lookups at a fraction of the range.
    TimeLookup {
        ts: i64,
        upper: f64,
    },
    Read {
        from: f64,
        max_bytes: usize,
        upper: f64,
    },
    Truncate(f64),
    Purge(f64),
    DeleteRecords(f64),
    Sync,
    Restart {
        clean: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(
            (prop::bool::weighted(0.2), 1..5i32, 0..200usize, 0..1000i64),
            1..6
        )
        .prop_map(Op::Append),
        2 => (0..1100i64, 0.0..1.2f64).prop_map(|(ts, upper)| Op::TimeLookup { ts, upper }),
        3 => (0.0..1.0f64, 0..3000usize, 0.0..1.2f64)
            .prop_map(|(from, max_bytes, upper)| Op::Read { from, max_bytes, upper }),
        1 => (0.0..1.0f64).prop_map(Op::Truncate),
        1 => (0.0..1.0f64).prop_map(Op::Purge),
        1 => (0.0..1.0f64).prop_map(Op::DeleteRecords),
        1 => Just(Op::Sync),
        1 => any::<bool>().prop_map(|clean| Op::Restart { clean }),
    ]
}

#[derive(Debug, Default)]
struct Model {
    /// (entry, offset before it)
    entries: Vec<(Entry, i64)>,
    next_offset: i64,
    log_start: i64,
    term: u64,
    /// Index the next append uses (survives purging every entry).
    next_index: u64,
}

impl Model {
    fn last_index(&self) -> Option<u64> {
        self.entries.last().map(|(e, _)| e.index)
    }
    fn first_index(&self) -> Option<u64> {
        self.entries.first().map(|(e, _)| e.index)
    }
    fn pos(&self, index: u64) -> usize {
        let first = self.first_index().expect("non-empty");
        (index - first) as usize
    }
    fn read(&self, from: i64, max_bytes: usize, upper: i64) -> (Vec<u8>, i64) {
        let mut out = Vec::new();
        let mut next = from;
        let mut any = false;
        for (e, _) in &self.entries {
            if e.kind != EntryKind::Batch {
                continue;
            }
            let h = BatchHeader::parse(&e.payload).expect("model batch");
            if h.last_offset() < from {
                continue;
            }
            if h.last_offset() >= upper || (any && out.len() + e.payload.len() > max_bytes) {
                break;
            }
            out.extend_from_slice(&e.payload);
            next = h.last_offset() + 1;
            any = true;
        }
        (out, next)
    }
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 900,
        segment_ms: None,
        index_interval_bytes: 128,
        fsync: FsyncPolicy::Always,
    }
}

fn check_state(log: &PartitionLog, m: &Model) {
    assert_eq!(log.last_index(), m.last_index().unwrap_or(0));
    assert_eq!(log.first_index(), m.first_index().unwrap_or(0));
    assert_eq!(log.next_offset(), m.next_offset);
    assert_eq!(log.log_start_offset(), m.log_start);
    assert_eq!(log.last_term(), m.entries.last().map_or(0, |(e, _)| e.term));
}

fn check_all(log: &PartitionLog, m: &Model) {
    check_state(log, m);
    if let (Some(f), Some(l)) = (m.first_index(), m.last_index()) {
        let got = log.entries(f, l + 1, usize::MAX).expect("entries");
        let want: Vec<Entry> = m.entries.iter().map(|(e, _)| e.clone()).collect();
        assert_eq!(got, want);
        for (e, before) in &m.entries {
            assert_eq!(log.term_of(e.index), Some(e.term));
            let after = if e.kind == EntryKind::Batch {
                BatchHeader::parse(&e.payload).expect("b").last_offset() + 1
            } else {
                *before
            };
            assert_eq!(log.offset_for_index(e.index).expect("ok"), Some(after));
        }
    }
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().expect("tmp");
    let mut log = PartitionLog::open(dir.path(), config()).expect("open");
    let mut m = Model {
        term: 1,
        next_index: 1,
        ..Model::default()
    };
    for op in ops {
        match op {
            Op::Append(specs) => {
                let mut batch = Vec::new();
                let mut next_index = m.next_index;
                let mut off = m.next_offset;
                for (is_raft, records, value_len, ts) in specs {
                    let before = off;
                    let e = if is_raft {
                        m.term += 1; // Raft entries mark a new term, as blank entries do.
                        raft_entry(m.term, next_index)
                    } else {
                        off += records as i64;
                        batch_entry(m.term, next_index, before, records, ts, value_len)
                    };
                    next_index += 1;
                    batch.push((e, before));
                }
                let entries: Vec<Entry> = batch.iter().map(|(e, _)| e.clone()).collect();
                let info = log.append(&entries).expect("append");
                m.entries.extend(batch);
                m.next_offset = off;
                m.next_index = next_index;
                assert_eq!(info.next_offset, off);
                assert_eq!(info.last_index, m.next_index - 1);
            }
            Op::Read {
                from,
                max_bytes,
                upper,
            } => {
                let span = (m.next_offset - m.log_start) as f64;
                let from = m.log_start + (span * from) as i64;
                let upper = m.log_start + (span * upper) as i64;
                let r = log.read(from, max_bytes, upper).expect("read");
                let (want, next) = m.read(from, max_bytes, upper.min(m.next_offset));
                assert_eq!(
                    r.data.as_ref(),
                    want.as_slice(),
                    "read({from}, {max_bytes}, {upper})"
                );
                assert_eq!(r.next_offset, next);
                if m.log_start > 0 {
                    assert!(log.read(m.log_start - 1, 1, i64::MAX).is_err());
                }
            }
            Op::TimeLookup { ts, upper } => {
                let span = (m.next_offset - m.log_start) as f64;
                let upper = m.log_start + (span * upper) as i64;
                let visible: Vec<BatchHeader> = m
                    .entries
                    .iter()
                    .filter(|(e, _)| e.kind == EntryKind::Batch)
                    .map(|(e, _)| BatchHeader::parse(&e.payload).expect("b"))
                    .filter(|h| h.last_offset() >= m.log_start && h.last_offset() < upper)
                    .collect();
                let want = visible
                    .iter()
                    .find(|h| h.max_timestamp >= ts)
                    .map(|h| h.base_offset);
                let got = log.find_offset_by_timestamp(ts, upper).expect("by ts");
                let got = got.map(|b| BatchHeader::parse(&b).expect("b").base_offset);
                assert_eq!(got, want, "find_offset_by_timestamp({ts}, {upper})");
                let mut best: Option<&BatchHeader> = None;
                for h in &visible {
                    if best.is_none_or(|b| h.max_timestamp > b.max_timestamp) {
                        best = Some(h);
                    }
                }
                let got = log.max_timestamp(upper).expect("max ts");
                let got = got.map(|(t, b)| (t, BatchHeader::parse(&b).expect("b").base_offset));
                assert_eq!(got, best.map(|h| (h.max_timestamp, h.base_offset)));
            }
            Op::Truncate(at) => {
                let Some(first) = m.first_index() else {
                    continue;
                };
                let last = m.last_index().expect("non-empty");
                let from = first + ((last - first + 1) as f64 * at) as u64;
                log.truncate_suffix(from).expect("truncate");
                let keep = m.pos(from).min(m.entries.len());
                if keep < m.entries.len() {
                    m.next_offset = m.entries[keep].1;
                    m.next_index = from;
                }
                m.entries.truncate(keep);
                m.log_start = m.log_start.min(m.next_offset);
                m.term = m.term.max(m.entries.last().map_or(0, |(e, _)| e.term));
            }
            Op::Purge(at) => {
                let Some(first) = m.first_index() else {
                    continue;
                };
                let last = m.last_index().expect("non-empty");
                let up_to = first + ((last - first + 1) as f64 * at) as u64;
                log.purge_prefix(up_to).expect("purge");
                match Some(log.first_index()).filter(|&f| f != 0) {
                    Some(new_first) => {
                        assert!(new_first >= first);
                        assert!(
                            new_first == first || new_first <= up_to + 1,
                            "purged past {up_to}"
                        );
                        let drop_n = m.pos(new_first);
                        m.entries.drain(..drop_n);
                        m.log_start = m.log_start.max(m.entries[0].1);
                    }
                    None => {
                        // Only an empty active segment is left: it starts at the log end.
                        assert!(last <= up_to);
                        m.entries.clear();
                        m.log_start = m.next_offset;
                    }
                }
            }
            Op::DeleteRecords(at) => {
                let target = m.log_start + ((m.next_offset - m.log_start) as f64 * at) as i64;
                log.delete_records_before(target).expect("delete records");
                m.log_start = m.log_start.max(target);
                if !m.entries.is_empty() {
                    let nf = log.first_index();
                    let drop_n = if nf == 0 { m.entries.len() } else { m.pos(nf) };
                    for (e, before) in m.entries.drain(..drop_n) {
                        let after = if e.kind == EntryKind::Batch {
                            BatchHeader::parse(&e.payload).expect("b").last_offset() + 1
                        } else {
                            before
                        };
                        assert!(after <= target, "deleted data at/after the new log start");
                    }
                }
            }
            Op::Sync => {
                let d = log.sync().expect("sync");
                match m.last_index() {
                    Some(l) => assert_eq!(d, l),
                    None => assert!(d < m.next_index),
                }
            }
            Op::Restart { clean } => {
                if clean {
                    log.close().expect("close");
                }
                drop(log);
                log = PartitionLog::open(dir.path(), config()).expect("reopen");
                check_all(&log, &m);
                assert_eq!(log.durable_index(), m.last_index().unwrap_or(0));
            }
        }
        check_state(&log, &m);
    }
    check_all(&log, &m);
}

proptest! {
    // PROPTEST_CASES raises the count for a longer hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn log_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        run(ops);
    }
}
