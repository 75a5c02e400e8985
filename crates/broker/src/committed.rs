//! Reading the committed records of an internal partition (the metadata log, the offsets
//! partitions) back from its log: the one reader behind every replay.

use kafka_protocol::records::{Record, RecordBatchDecoder};
use raft::Partition;

/// Calls `f` with every committed data record of `part` from offset `from` up to the high
/// watermark (read once, at the start), in offset order; control records are skipped.
/// Returns the high watermark read up to (at least `from`). An undecodable batch is an
/// error naming its offset; the records before it have been passed to `f`. Blocking reads.
pub fn for_each(
    part: &Partition,
    from: i64,
    mut f: impl FnMut(Record) -> Result<(), raft::Error>,
) -> Result<i64, raft::Error> {
    for_each_with_control(part, from, |r| if r.control { Ok(()) } else { f(r) })
}

/// Like [`for_each`], control records (transaction markers) included.
pub fn for_each_with_control(
    part: &Partition,
    from: i64,
    mut f: impl FnMut(Record) -> Result<(), raft::Error>,
) -> Result<i64, raft::Error> {
    let mut offset = from.max(part.log_start_offset());
    let hw = part.high_watermark();
    while offset < hw {
        let read = part.read(offset, 4 << 20)?;
        if read.data.is_empty() {
            break;
        }
        let mut data = read.data;
        let mut next = offset;
        while !data.is_empty() {
            let set = RecordBatchDecoder::decode(&mut data).map_err(|e| {
                raft::Error::Failed(format!("undecodable batch at offset {next}: {e}"))
            })?;
            for r in set.records {
                next = next.max(r.offset + 1);
                if r.offset < offset || r.offset >= hw {
                    continue;
                }
                f(r)?;
            }
        }
        if next <= offset {
            break;
        }
        offset = next;
    }
    Ok(hw.max(from))
}
