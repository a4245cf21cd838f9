//! A follower that finds its leader's agent gone stands for election as soon as the
//! followers' lease on that leader has run out, instead of waiting a random election
//! timeout (1-2 s) on top of it.
//!
//! "Gone" is precise here: the leader's manager port refuses a connection (its host
//! answers, nothing listens: the agent died or was killed). A leader that is only silent
//! (a partition, a starved machine, a host that is off) is deposed no earlier than
//! openraft's own election timer would (the lease plus the longest election timeout),
//! so a slow leader is never deposed early.
//!
//! The other voters stand one after the other, in Raft ID order, [`STAGGER`] apart: two
//! standing at once would split the vote and both wait again. The first may lose: its
//! log may lack the last entries the leader committed with another follower's answer
//! (the others then refuse it), or its requests may be lost. Openraft's own timer is no
//! fallback then: a node that saw a longer log in answer to its candidacy waits a
//! further twice the longest election timeout, and keeps that penalty until its timer
//! next makes it stand, so two followers that had each once lost a vote waited 7-8 s
//! and split their votes (one `leader_kill` round in ten took 10.45 s). Instead, a later
//! voter still following the gone leader when its turn comes stands too, one term past
//! each voter before it (it stands as often as its rank, plus once), so its candidacy
//! cannot tie with theirs.
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
/// Between one voter's turn to stand and the next one's: a candidacy's vote round trip
/// (the voters' fsync included) on a loaded machine.
const STAGGER: Duration = Duration::from_millis(700);

/// Whom this member should stand against now, if anyone, and its rank among the other
/// voters: it follows `status.leader` and last heard from it `heard` ago, longer than
/// its wait plus its rank times [`STAGGER`]. The wait: the lease plus [`PAST_LEASE`]
/// when the leader's port `refuses` connections; else the lease plus the longest
/// election timeout (here equal to the lease), when openraft's timer would have made an
/// unpenalised follower stand.
pub(super) fn should_stand(
    status: &StoreStatus,
    heard: Option<(RaftId, Duration)>,
    lease: Duration,
    refuses: bool,
) -> Option<(RaftId, u32)> {
    if status.state != MemberState::Follower {
        return None;
    }
    let leader = status.leader?;
    if leader == status.id || !status.voters.contains_key(&status.id) {
        return None;
    }
    let (from, silent) = heard?;
    if from != leader {
        return None;
    }
    let rank = status
        .voters
        .keys()
        .filter(|id| **id != leader)
        .position(|id| *id == status.id)?;
    let rank = u32::try_from(rank).ok()?;
    let wait = match refuses {
        true => lease + PAST_LEASE,
        false => lease * 2,
    };
    (silent >= wait + STAGGER * rank).then_some((leader, rank))
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
        let heard = core.store.last_heard();
        let lease = core.store.leader_lease();
        // The earliest turn (a refused port) before asking the port.
        if should_stand(&status, heard, lease, true).is_none() {
            continue;
        }
        let Some(addr) = status.leader.and_then(|l| status.voters.get(&l)) else {
            continue;
        };
        let refuses = refused(addr).await;
        let Some((leader, rank)) = should_stand(&status, heard, lease, refuses) else {
            continue;
        };
        match refuses {
            true => tracing::info!(
                leader,
                %addr,
                term = status.term,
                rank,
                "the leader's manager port refuses connections and its lease ran out: standing for election"
            ),
            false => tracing::info!(
                leader,
                %addr,
                term = status.term,
                rank,
                silent_ms = heard.map_or(0, |(_, d)| d.as_millis() as u64),
                "the leader is silent past the lease and the longest election timeout: standing for election"
            ),
        }
        stood = Some(status.term);
        // Each call is one candidacy, one term on: the last one is past every term the
        // voters ranked before this one stood for.
        for _ in 0..=rank {
            if let Err(e) = core.store.elect().await {
                tracing::warn!(error = %e, "standing for election");
                break;
            }
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
    fn the_other_voters_stand_in_turn_past_the_lease() {
        use MemberState::{Candidate, Follower, Learner};
        let lease = Duration::from_secs(2);
        // Member `id` in `state`, following `leader`, heard `from` `ms` ago; the port
        // refuses or not.
        let stand = |id, state, leader, heard: Option<(RaftId, u64)>, refuses| {
            let heard = heard.map(|(from, ms)| (from, Duration::from_millis(ms)));
            should_stand(&status(id, state, leader), heard, lease, refuses)
        };
        let long = Some((1, 2300));
        let later = Some((1, 2300 + STAGGER.as_millis() as u64));
        // Leader 1 silent past the lease: 2 is the first of the others, 3 is not yet.
        assert_eq!(stand(2, Follower, Some(1), long, true), Some((1, 0)));
        assert_eq!(stand(3, Follower, Some(1), long, true), None);
        // Still following the silent leader a turn later (2 lost, or never stood): 3
        // stands, second.
        assert_eq!(stand(3, Follower, Some(1), later, true), Some((1, 1)));
        // Leader 2 gone: 1 stands.
        assert_eq!(
            stand(1, Follower, Some(2), Some((2, 2300)), true),
            Some((2, 0))
        );
        // A leader that is only silent: not before openraft's own timer would stand.
        assert_eq!(stand(2, Follower, Some(1), later, false), None);
        let timer = Some((1, 4000));
        assert_eq!(stand(2, Follower, Some(1), timer, false), Some((1, 0)));
        assert_eq!(stand(3, Follower, Some(1), timer, false), None);
        // Within the lease (plus its margin), or heard from another leader, or none yet.
        assert_eq!(stand(2, Follower, Some(1), Some((1, 2100)), true), None);
        assert_eq!(stand(2, Follower, Some(1), Some((3, 5000)), true), None);
        assert_eq!(stand(2, Follower, Some(1), None, true), None);
        // Not a follower, no leader known, or not a voter.
        assert_eq!(stand(2, Candidate, Some(1), long, true), None);
        assert_eq!(stand(2, Follower, None, long, true), None);
        assert_eq!(stand(4, Learner, Some(1), long, true), None);
        assert_eq!(stand(4, Follower, Some(1), long, true), None);
    }
}
