//! Which partitions of an internal topic this node serves as their leader: the shared
//! bookkeeping of the coordinators (consumer groups over `__consumer_offsets`, transactions
//! over `__transaction_state`). A coordinator serves the keys of a partition while it leads
//! it in the term it loaded it in; a new term means a new load (another leader may have
//! written in between).

use std::time::Duration;

use parking_lot::Mutex;

use crate::api::codes;

/// Whether this node serves one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Load {
    /// Not leading it: its state is not in memory.
    #[default]
    No,
    /// Leading it in this term; replaying the partition.
    Running(u64),
    /// Leading it in this term with its state loaded: served.
    Done(u64),
}

/// What changed in leadership since the last check.
pub(crate) enum Change {
    /// Now leading partition `k` in `term`: load it, then [`Led::loaded`].
    Load(usize, raft::Partition, u64),
    /// No longer leading partition `k`: drop its state.
    Drop(usize),
}

pub(crate) struct Led {
    node_id: raft::NodeId,
    /// The partitions by index; `None` where this node holds no replica.
    partitions: Vec<Option<raft::Partition>>,
    loads: Mutex<Vec<Load>>,
}

impl Led {
    pub fn new(node_id: raft::NodeId, partitions: Vec<Option<raft::Partition>>) -> Led {
        let n = partitions.len();
        Led {
            node_id,
            partitions,
            loads: Mutex::new(vec![Load::No; n]),
        }
    }

    pub fn len(&self) -> usize {
        self.partitions.len()
    }

    pub fn partition(&self, k: usize) -> Option<&raft::Partition> {
        self.partitions.get(k).and_then(|p| p.as_ref())
    }

    /// Waits (at most `timeout`) until every partition has a leader and those led here are
    /// loaded.
    pub async fn settle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pending = {
                let loads = self.loads.lock();
                // Leaderless partitions count as pending: they may elect this node.
                self.partitions.iter().enumerate().any(|(k, p)| {
                    p.as_ref().is_some_and(|p| {
                        let role = p.role();
                        role.leader.is_none()
                            || (role.leader == Some(self.node_id)
                                && loads[k] != Load::Done(role.term))
                    })
                })
            };
            if !pending {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The error for a request about a key of partition `k` if this node does not serve it
    /// now: NOT_COORDINATOR when it does not lead it, COORDINATOR_LOAD_IN_PROGRESS while it
    /// is loading it.
    pub fn not_serving(&self, k: usize) -> Option<i16> {
        let Some(p) = self.partition(k) else {
            return Some(codes::NOT_COORDINATOR);
        };
        let role = p.role();
        if role.leader != Some(self.node_id) {
            return Some(codes::NOT_COORDINATOR);
        }
        match self.loads.lock()[k] {
            Load::Done(t) if t == role.term => None,
            _ => Some(codes::COORDINATOR_LOAD_IN_PROGRESS),
        }
    }

    /// The term partition `k` is served in, if it is served now.
    pub fn serving_term(&self, k: usize) -> Option<u64> {
        self.term_served(k, self.loads.lock()[k])
    }

    /// The partitions served now, from one look at the loads.
    pub fn served(&self) -> Vec<bool> {
        let loads = self.loads.lock();
        (0..self.partitions.len())
            .map(|k| self.term_served(k, loads[k]).is_some())
            .collect()
    }

    /// The term partition `k` is served in, given its load.
    fn term_served(&self, k: usize, load: Load) -> Option<u64> {
        let role = self.partition(k)?.role();
        (role.leader == Some(self.node_id) && load == Load::Done(role.term)).then_some(role.term)
    }

    /// Compares leadership with what is loaded: partitions led in a term not loaded yet are
    /// marked loading and returned to load; partitions no longer led are returned to drop.
    pub fn check(&self) -> Vec<Change> {
        let mut loads = self.loads.lock();
        let mut out = Vec::new();
        for (k, p) in self.partitions.iter().enumerate() {
            let Some(p) = p else { continue };
            let role = p.role();
            let leads = role.leader == Some(self.node_id);
            match (leads, loads[k]) {
                (true, Load::Running(t) | Load::Done(t)) if t == role.term => {}
                (true, _) => {
                    loads[k] = Load::Running(role.term);
                    out.push(Change::Drop(k));
                    out.push(Change::Load(k, p.clone(), role.term));
                }
                (false, Load::No) => {}
                (false, _) => {
                    loads[k] = Load::No;
                    out.push(Change::Drop(k));
                }
            }
        }
        out
    }

    /// Waits until partition `k`, led here in `term`, has committed its whole log (a new
    /// leader knows everything committed once it commits in its own term). Err with the
    /// reason when leadership moved or it takes more than 30 s; the load is then abandoned.
    pub async fn caught_up(&self, k: usize, p: &raft::Partition, term: u64) -> Result<(), String> {
        let me = Some(self.node_id);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let role = p.role();
            if role.leader != me || role.term != term {
                return Err(self.give_up(k, term, "leadership moved"));
            }
            if p.high_watermark() >= p.log_end_offset() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.give_up(k, term, "the high watermark did not reach the log end"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Forgets that partition `k` is loaded: the next check loads it again (its state in
    /// memory may have missed a write).
    pub fn invalidate(&self, k: usize) {
        self.loads.lock()[k] = Load::No;
    }

    /// Abandons the load of partition `k` in `term`.
    pub fn give_up(&self, k: usize, term: u64, why: &str) -> String {
        let mut loads = self.loads.lock();
        if loads[k] == Load::Running(term) {
            loads[k] = Load::No;
        }
        why.to_string()
    }

    /// Finishes the load of partition `k` in `term`: `install` puts the loaded state in
    /// place, under the loads lock, unless leadership moved meanwhile (then it is not called
    /// and false is returned).
    pub fn loaded(&self, k: usize, p: &raft::Partition, term: u64, install: impl FnOnce()) -> bool {
        let mut loads = self.loads.lock();
        let role = p.role();
        if loads[k] != Load::Running(term) || role.leader != Some(self.node_id) || role.term != term
        {
            return false;
        }
        install();
        loads[k] = Load::Done(term);
        true
    }
}
