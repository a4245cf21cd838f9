//! A follower that finds its leader's agent gone stands for election as soon as the
//! followers' lease on that leader has run out, instead of waiting a random election
//! timeout (1-2 s) on top of it.
//!
//! "Gone" is precise here: the leader's manager port refuses a connection (its host
//! answers, nothing listens: the agent died or was killed). A leader that is only silent
//! (a partition, a starved machine, a host that is off) is left to the election timer,
//! so a slow leader is never deposed early. Only the first of the other voters in Raft
//! ID order stands: two standing at once would split the vote and both wait again.
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::Core;
use crate::store::{MemberState, RaftId, StoreStatus};

/// How often a follower looks.
const TICK: Duration = Duration::from_millis(100);
/// Past the lease before standing: the other followers' leases, started by the same
/// heartbeat a few milliseconds apart, must have run out too, or they refuse the vote.
const PAST_LEASE: Duration = Duration::from_millis(200);
/// Bound on the connection attempt that tells a dead agent from a silent host.
const CONNECT: Duration = Duration::from_millis(300);

/// The leader this member should stand against now, if any (before asking the leader's
/// port): this member follows `status.leader`, last heard from it `heard` ago, longer
/// than the lease plus [`PAST_LEASE`], and comes first among the other voters.
pub(super) fn should_stand(
    status: &StoreStatus,
    heard: Option<(RaftId, Duration)>,
    lease: Duration,
) -> Option<RaftId> {
    if status.state != MemberState::Follower {
        return None;
    }
    let leader = status.leader?;
    if leader == status.id || !status.voters.contains_key(&status.id) {
        return None;
    }
    let (from, silent) = heard?;
    if from != leader || silent < lease + PAST_LEASE {
        return None;
    }
    let first = status.voters.keys().copied().find(|id| *id != leader)?;
    (first == status.id).then_some(leader)
}

/// Whether nothing listens at `addr` (the connection is refused), within [`CONNECT`].
async fn refused(addr: &str) -> bool {
    matches!(
        tokio::time::timeout(CONNECT, TcpStream::connect(addr)).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// On every manager; acts while it follows (see the module's documentation).
pub(super) async fn dead_leader_loop(core: Arc<Core>) {
    // The term this member last stood in: once per leader.
    let mut stood: Option<u64> = None;
    loop {
        tokio::time::sleep(TICK).await;
        let status = core.store.status();
        if stood == Some(status.term) {
            continue;
        }
        let Some(leader) =
            should_stand(&status, core.store.last_heard(), core.store.leader_lease())
        else {
            continue;
        };
        let Some(addr) = status.voters.get(&leader) else {
            continue;
        };
        if !refused(addr).await {
            continue;
        }
        tracing::info!(
            leader,
            %addr,
            term = status.term,
            "the leader's manager port refuses connections and its lease ran out: standing for election"
        );
        stood = Some(status.term);
        if let Err(e) = core.store.elect().await {
            tracing::warn!(error = %e, "standing for election");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn status(id: RaftId, state: MemberState, leader: Option<RaftId>) -> StoreStatus {
        StoreStatus {
            id,
            state,
            term: 3,
            leader,
            voters: BTreeMap::from([
                (1, "10.0.0.1:2377".into()),
                (2, "10.0.0.2:2377".into()),
                (3, "10.0.0.3:2377".into()),
            ]),
            learners: Default::default(),
            last_log_index: None,
            last_applied_index: None,
            snapshot_index: None,
            purged_index: None,
            millis_since_quorum_ack: None,
            fsync: Default::default(),
            failure: None,
        }
    }

    #[test]
    fn only_the_first_other_voter_stands_and_only_past_the_lease() {
        let lease = Duration::from_secs(2);
        let long = Some((1, Duration::from_millis(2300)));
        // Leader 1 silent past the lease: 2 is the first of the others, 3 is not.
        assert_eq!(
            should_stand(&status(2, MemberState::Follower, Some(1)), long, lease),
            Some(1)
        );
        assert_eq!(
            should_stand(&status(3, MemberState::Follower, Some(1)), long, lease),
            None
        );
        // Leader 2 gone: 1 stands.
        let long2 = Some((2, Duration::from_millis(2300)));
        assert_eq!(
            should_stand(&status(1, MemberState::Follower, Some(2)), long2, lease),
            Some(2)
        );
        // Within the lease (plus its margin), or heard from another leader, or none yet.
        let recent = Some((1, Duration::from_millis(2100)));
        assert_eq!(
            should_stand(&status(2, MemberState::Follower, Some(1)), recent, lease),
            None
        );
        let other = Some((3, Duration::from_millis(5000)));
        assert_eq!(
            should_stand(&status(2, MemberState::Follower, Some(1)), other, lease),
            None
        );
        assert_eq!(
            should_stand(&status(2, MemberState::Follower, Some(1)), None, lease),
            None
        );
        // Not a follower, no leader known, or not a voter.
        assert_eq!(
            should_stand(&status(2, MemberState::Candidate, Some(1)), long, lease),
            None
        );
        assert_eq!(
            should_stand(&status(2, MemberState::Follower, None), long, lease),
            None
        );
        assert_eq!(
            should_stand(&status(4, MemberState::Learner, Some(1)), long, lease),
            None
        );
        assert_eq!(
            should_stand(&status(4, MemberState::Follower, Some(1)), long, lease),
            None
        );
    }
}
