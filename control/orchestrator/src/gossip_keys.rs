//! The gossip cluster key's rotation, done by the leading manager.
//!
//! `swarm init` puts the first key in the store; nodes get the keys with their state over
//! mutual TLS and seal with the first. Every [`ROTATE_EVERY`] (Swarm's 12 h) the leader
//! rotates in two steps, so that no node ever receives a packet under a key it does not
//! know yet: first a new key is added as accepted only (`[current, new]`); once every
//! node has had time to fetch it ([`PROMOTE_AFTER`]) it becomes primary and the old one
//! stays accepted (`[new, current]`) until the next rotation retires it.

use std::time::Duration;

use shoal_cluster::{
    manager::{new_gossip_key, Manager},
    store::{Command, GossipKey},
};
use tracing::{debug, info, warn};

use crate::scheduler::now_ms;

/// How long a key is primary before the next one is brought in.
pub const ROTATE_EVERY: Duration = Duration::from_secs(12 * 3600);
/// How long a new key is only accepted before it becomes primary.
pub const PROMOTE_AFTER: Duration = Duration::from_secs(60);
/// How often the leader looks.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// What the keys should become at `now_ms`, if they should change. `fresh(id)` makes a
/// new key named `id`.
pub fn plan(
    keys: &[GossipKey],
    now_ms: u64,
    rotate_every: Duration,
    promote_after: Duration,
    fresh: impl FnOnce(u32) -> Option<GossipKey>,
) -> Option<Vec<GossipKey>> {
    let Some(primary) = keys.first() else {
        return Some(vec![fresh(1)?]);
    };
    let age = |k: &GossipKey| Duration::from_millis(now_ms.saturating_sub(k.created_ms));
    // A newer key waiting to be promoted.
    if let Some(next) = keys.get(1).filter(|k| k.created_ms > primary.created_ms) {
        return (age(next) >= promote_after).then(|| vec![next.clone(), primary.clone()]);
    }
    if age(primary) < rotate_every {
        return None;
    }
    let max = keys.iter().map(|k| k.id).max().unwrap_or(0);
    let id = max.checked_add(1).unwrap_or(1);
    Some(vec![primary.clone(), fresh(id)?])
}

/// Runs on every manager; acts only while it leads.
pub async fn run(manager: Manager) {
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if !manager.is_leader() {
            continue;
        }
        let Some(state) = manager.local_state() else {
            return;
        };
        let fresh = |id| match new_gossip_key(id) {
            Ok(k) => Some(k),
            Err(e) => {
                warn!(error = %e, "no new gossip key");
                None
            }
        };
        let Some(keys) = plan(
            &state.gossip_keys,
            now_ms(),
            ROTATE_EVERY,
            PROMOTE_AFTER,
            fresh,
        ) else {
            continue;
        };
        let ids: Vec<u32> = keys.iter().map(|k| k.id).collect();
        match manager.execute(Command::SetGossipKeys { keys }).await {
            Ok(r) => match r.into_result() {
                Ok(_) => info!(keys = ?ids, primary = ids[0], "gossip keys rotated"),
                Err(rejection) => warn!(%rejection, "gossip key change refused"),
            },
            Err(e) => debug!(error = %e, "gossip key change not made"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u32, created_ms: u64) -> GossipKey {
        GossipKey {
            id,
            secret: "ab".repeat(32),
            created_ms,
        }
    }

    const H: u64 = 3600 * 1000;

    fn step(keys: &[GossipKey], now: u64) -> Option<Vec<GossipKey>> {
        plan(keys, now, ROTATE_EVERY, PROMOTE_AFTER, |id| {
            Some(key(id, now))
        })
    }

    fn ids(keys: &[GossipKey]) -> Vec<u32> {
        keys.iter().map(|k| k.id).collect()
    }

    #[test]
    fn first_key_then_two_step_rotation() {
        assert_eq!(ids(&step(&[], 5).unwrap()), vec![1]);
        let k = vec![key(1, 0)];
        assert_eq!(step(&k, 11 * H), None, "young key stays");
        // 12 h: the new key is accepted first, not used.
        let added = step(&k, 12 * H).unwrap();
        assert_eq!(ids(&added), vec![1, 2]);
        assert_eq!(
            step(&added, 12 * H + 59_000),
            None,
            "not promoted before 60 s"
        );
        let promoted = step(&added, 12 * H + 60_000).unwrap();
        assert_eq!(
            ids(&promoted),
            vec![2, 1],
            "new primary, old still accepted"
        );
        assert_eq!(step(&promoted, 20 * H), None);
        // Next rotation retires key 1.
        let again = step(&promoted, 24 * H + 60_000).unwrap();
        assert_eq!(ids(&again), vec![2, 3]);
        assert_eq!(ids(&step(&again, 25 * H).unwrap()), vec![3, 2]);
    }

    #[test]
    fn the_store_refuses_bad_key_sets_and_changes_nothing() {
        use shoal_cluster::store::ClusterState;
        let mut s = ClusterState::default();
        let good = vec![key(1, 0)];
        assert!(s
            .apply(&Command::SetGossipKeys { keys: good.clone() })
            .into_result()
            .is_ok());
        let mut short = key(2, 0);
        short.secret.pop();
        let mut not_hex = key(2, 0);
        not_hex.secret = "zz".repeat(32);
        for bad in [
            vec![],
            vec![key(1, 0), key(2, 0), key(3, 0), key(4, 0)],
            vec![key(2, 0), key(2, 1)],
            vec![short],
            vec![not_hex],
        ] {
            let version = s.version;
            let r = s.apply(&Command::SetGossipKeys { keys: bad.clone() });
            assert!(r.into_result().is_err(), "{bad:?} accepted");
            assert_eq!((s.version, &s.gossip_keys), (version, &good));
        }
        assert!(!format!("{:?}", good[0]).contains("abab"), "secret printed");
    }

    #[test]
    fn no_randomness_no_change() {
        assert_eq!(plan(&[], 0, ROTATE_EVERY, PROMOTE_AFTER, |_| None), None);
    }
}
