//! Which members this node reaches directly: its own probes, answered.
//!
//! Gossip's failure detector says whether a node is alive, from heartbeats that reach
//! this node through any peer: a node this one cannot reach (a partition between the
//! two, the rest of the cluster still reaching both) stays alive to it. Whatever this
//! node sends to such a node is lost, mesh and VIP connections included. So each node
//! probes every member it trusts on the gossip socket, sealed as gossip is, and judges
//! for itself:
//!
//! - every [`ProbeTiming::interval`] each member gets a probe carrying this node's send
//!   time; it answers at once with an ack echoing it. An ack proves the round trip from
//!   this node to it and back, as of the probe's send time;
//! - a member is unreachable once its newest answered probe was sent more than
//!   [`ProbeTiming::deadline`] ago and at least [`ProbeTiming::min_missed`] probes went
//!   unanswered since the last ack came in (a node that was itself starved of the CPU
//!   sent none meanwhile, so it does not judge its peers on its own stall);
//! - once its newest answered probe was sent more than [`ProbeTiming::lost_after`] ago,
//!   the flows this node has to it are given up as well ([`Unanswered::lost`]): a
//!   verdict that held that long is no passing stall, and a connection kept waiting on
//!   a path that is gone is better reset (a client opens a new one) than left hanging.
//!   Only while at most half of the members are unreachable: all of them late at once
//!   is this node's or the network's trouble (a starved machine), not theirs;
//! - it is reachable again with its first ack;
//! - a member that never answered is not judged (an agent that does not answer probes,
//!   one just started, one whose generation changed): it counts as reachable.
//!
//! The verdicts are this node's only: they go to its own load balancing (no new flows
//! to backends on an unreachable node, then none of its flows), never into what it
//! gossips.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

// Tokio's clock, not std's: the same in a running agent, and in tests on paused time
// (the in-memory network) the verdicts follow the time the test advances.
use tokio::{sync::watch, time::Instant};
use tracing::info;

use crate::identity::TrustSet;

/// The members this node cannot reach, by node ID.
pub type Unreachable = BTreeMap<String, Unanswered>;

/// A member this node's probes do not reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unanswered {
    /// Its gossip address's IP (its data-path address in shoal).
    pub addr: IpAddr,
    /// Silent past [`ProbeTiming::lost_after`]: the flows this node has to it are given
    /// up too, not only new ones kept from it.
    pub lost: bool,
}

/// Where the verdicts go: every change of the set of unreachable members.
pub type ReachSender = Arc<watch::Sender<Arc<Unreachable>>>;

/// A probe's plaintext: this prefix, then the sender's send time (8 bytes, big-endian,
/// milliseconds of its own clock). Not a chitchat message: chitchat's first byte is its
/// message type, 0 to 3.
pub(crate) const PROBE: [u8; 4] = [0xf0, b'P', b'R', b'B'];
/// An ack's plaintext: this prefix, then the probe's send time, echoed.
pub(crate) const ACK: [u8; 4] = [0xf0, b'A', b'C', b'K'];
const PROBE_LEN: usize = 12;

/// What a probe or ack says, once opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    /// A member asks: answer with an ack echoing `stamp`.
    Ask { stamp: u64 },
    /// A member answers this node's probe sent at `stamp`.
    Answer { stamp: u64 },
}

impl Probe {
    /// Reads a probe or an ack; `None`: not one (a chitchat message, or garbage).
    pub(crate) fn parse(plain: &[u8]) -> Option<Result<Probe, String>> {
        let prefix: [u8; 4] = plain.get(..4)?.try_into().ok()?;
        if prefix != PROBE && prefix != ACK {
            return None;
        }
        let Some(stamp) = plain
            .get(4..)
            .filter(|s| s.len() == PROBE_LEN - 4)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_be_bytes)
        else {
            return Some(Err(format!("a probe of {} bytes", plain.len())));
        };
        Some(Ok(if prefix == PROBE {
            Probe::Ask { stamp }
        } else {
            Probe::Answer { stamp }
        }))
    }

    pub(crate) fn encode(self) -> Vec<u8> {
        let (prefix, stamp) = match self {
            Probe::Ask { stamp } => (PROBE, stamp),
            Probe::Answer { stamp } => (ACK, stamp),
        };
        let mut out = Vec::with_capacity(PROBE_LEN);
        out.extend_from_slice(&prefix);
        out.extend_from_slice(&stamp.to_be_bytes());
        out
    }
}

/// Probe timings. The defaults: a probe to every member every 200 ms (gossip's own
/// interval); unreachable once the newest answered probe was sent 600 ms ago and the 2
/// sent after it are unanswered. A connection's first SYN lost to a node cut off is sent
/// again 1 s later (Linux's initial retransmission timeout), and a client's connect
/// rarely waits for the next one (3 s later): the verdict, 600 to 800 ms after the cut,
/// leaves the pipeline and the maps some 200 ms to send that retransmitted SYN to a
/// backend elsewhere. A member whose agent is slow to answer for longer (a loaded
/// machine) is judged unreachable too, until its next answer: that only keeps new flows
/// from its backends meanwhile.
///
/// After 3 s of silence the flows this node has to the member are given up too: a
/// kept-alive connection waiting there is reset by the backend it is moved to, and its
/// client opens a new one well within its own timeout; a member that was only slow to
/// answer for less than that keeps its flows.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeTiming {
    pub interval: Duration,
    pub deadline: Duration,
    pub min_missed: u32,
    /// At least `deadline`.
    pub lost_after: Duration,
}

impl Default for ProbeTiming {
    fn default() -> Self {
        ProbeTiming {
            interval: Duration::from_millis(200),
            deadline: Duration::from_millis(600),
            min_missed: 2,
            lost_after: Duration::from_secs(3),
        }
    }
}

#[derive(Debug)]
struct Peer {
    generation: u64,
    addr: SocketAddr,
    /// Send time of the newest probe it answered.
    answered: Option<Instant>,
    /// Probes sent since its last ack came in.
    missed: u32,
    unreachable: bool,
    /// Unreachable for [`ProbeTiming::lost_after`].
    lost: bool,
}

impl Peer {
    /// A run of a member at an address, not probed yet: reachable until judged otherwise.
    fn unjudged(generation: u64, addr: SocketAddr) -> Peer {
        Peer {
            generation,
            addr,
            answered: None,
            missed: 0,
            unreachable: false,
            lost: false,
        }
    }
}

/// A probe due now: sealed for `node`, sent to `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Due {
    pub node: String,
    pub addr: SocketAddr,
    pub probe: Probe,
}

/// One node's probes and verdicts.
pub(crate) struct Reach {
    timing: ProbeTiming,
    me: String,
    /// The zero of the stamps this node sends.
    epoch: Instant,
    next: Instant,
    peers: BTreeMap<String, Peer>,
    out: ReachSender,
    /// Verdicts so far: unreachable, reachable again.
    pub(crate) judged_unreachable: u64,
    pub(crate) judged_back: u64,
}

impl Reach {
    pub(crate) fn new(me: String, timing: ProbeTiming, out: ReachSender, now: Instant) -> Reach {
        out.send_if_modified(|u| {
            let changed = !u.is_empty();
            *u = Arc::default();
            changed
        });
        Reach {
            timing,
            me,
            epoch: now,
            next: now,
            peers: BTreeMap::new(),
            out,
            judged_unreachable: 0,
            judged_back: 0,
        }
    }

    /// When the next probes are due.
    pub(crate) fn next_due(&self) -> Instant {
        self.next
    }

    /// The probes due at `now` (none before [`Reach::next_due`]), after following the
    /// members in `trust` and judging each one.
    pub(crate) fn due(&mut self, now: Instant, trust: &TrustSet) -> Vec<Due> {
        if now < self.next {
            return Vec::new();
        }
        // After a stall, the next round is one interval from now: no burst.
        self.next = now + self.timing.interval;
        let members: BTreeSet<&str> = trust
            .iter()
            .map(|(id, _)| id)
            .filter(|id| *id != self.me)
            .collect();
        let mut changed = false;
        self.peers.retain(|id, p| {
            let keep = members.contains(id.as_str());
            changed |= !keep && p.unreachable;
            keep
        });
        let stamp = now.duration_since(self.epoch).as_millis() as u64;
        let mut due = Vec::with_capacity(members.len());
        for (id, t) in trust.iter().filter(|(id, _)| *id != self.me) {
            let peer = self
                .peers
                .entry(id.to_owned())
                .or_insert_with(|| Peer::unjudged(t.generation, t.addr));
            if (peer.generation, peer.addr) != (t.generation, t.addr) {
                // Another run of it, or another address: judged afresh.
                changed |= peer.unreachable;
                *peer = Peer::unjudged(t.generation, t.addr);
            }
            if let Some(answered) = peer.answered {
                if !peer.unreachable
                    && peer.missed >= self.timing.min_missed
                    && now.duration_since(answered) >= self.timing.deadline
                {
                    peer.unreachable = true;
                    changed = true;
                    self.judged_unreachable += 1;
                    info!(node = %id, addr = %t.addr,
                        silent_ms = now.duration_since(answered).as_millis() as u64,
                        missed = peer.missed,
                        "a member does not answer this node's probes: unreachable from here");
                }
            }
            peer.missed = peer.missed.saturating_add(1);
            due.push(Due {
                node: id.to_owned(),
                addr: t.addr,
                probe: Probe::Ask { stamp },
            });
        }
        // Flows are given up only while the silent members are at most half of them:
        // every member late at once says more about this node or the whole network (a
        // starved machine, a congested switch) than about each of them, and resetting
        // every connection would only add to it. Gossip's own failure detector still
        // withdraws the members that are gone.
        let silent = self.peers.values().filter(|p| p.unreachable).count();
        if silent * 2 <= self.peers.len() {
            for (id, peer) in &mut self.peers {
                let Some(answered) = peer.answered else {
                    continue;
                };
                if peer.unreachable
                    && !peer.lost
                    && now.duration_since(answered) >= self.timing.lost_after
                {
                    peer.lost = true;
                    changed = true;
                    info!(node = %id, addr = %peer.addr,
                        silent_ms = now.duration_since(answered).as_millis() as u64,
                        "a member still does not answer this node's probes: its flows from here are given up");
                }
            }
        }
        if changed {
            self.publish();
        }
        due
    }

    /// `node` answered the probe this node sent at `stamp`.
    pub(crate) fn answered(&mut self, node: &str, stamp: u64, now: Instant) {
        let Some(peer) = self.peers.get_mut(node) else {
            return;
        };
        let sent = self.epoch + Duration::from_millis(stamp);
        // A stamp from the future was not this node's.
        if sent > now {
            return;
        }
        peer.missed = 0;
        if peer.answered.is_none_or(|a| a < sent) {
            peer.answered = Some(sent);
        }
        if peer.unreachable {
            peer.unreachable = false;
            peer.lost = false;
            self.judged_back += 1;
            info!(node = %node, addr = %peer.addr,
                rtt_ms = now.duration_since(sent).as_millis() as u64,
                "a member answers this node's probes again: reachable");
            self.publish();
        }
    }

    fn publish(&self) {
        let set: Unreachable = self
            .peers
            .iter()
            .filter(|(_, p)| p.unreachable)
            .map(|(id, p)| {
                let u = Unanswered {
                    addr: p.addr.ip(),
                    lost: p.lost,
                };
                (id.clone(), u)
            })
            .collect();
        self.out.send_if_modified(|u| {
            if **u == set {
                return false;
            }
            *u = Arc::new(set);
            true
        });
    }
}

impl Drop for Reach {
    /// A node that stops probing judges no one: nothing stays unreachable.
    fn drop(&mut self) {
        self.out.send_if_modified(|u| {
            let changed = !u.is_empty();
            *u = Arc::default();
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{LocalIdentity, TrustedNode};

    fn trust(nodes: &[(&str, u64)]) -> TrustSet {
        let key = LocalIdentity::generate().unwrap().public_key();
        let mut t = TrustSet::new();
        for (i, (id, generation)) in nodes.iter().enumerate() {
            t.insert(
                *id,
                TrustedNode {
                    generation: *generation,
                    addr: format!("10.0.0.{}:7946", i + 1).parse().unwrap(),
                    key,
                },
            );
        }
        t
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    struct Probed {
        reach: Reach,
        rx: watch::Receiver<Arc<Unreachable>>,
        t0: Instant,
    }

    fn probed() -> Probed {
        let (tx, rx) = watch::channel(Arc::new(Unreachable::new()));
        let t0 = Instant::now();
        Probed {
            reach: Reach::new("a".into(), ProbeTiming::default(), Arc::new(tx), t0),
            rx,
            t0,
        }
    }

    fn stamp_of(due: &[Due], node: &str) -> u64 {
        match due.iter().find(|d| d.node == node).unwrap().probe {
            Probe::Ask { stamp } => stamp,
            other => panic!("{other:?}"),
        }
    }

    fn unreachable(p: &Probed) -> Vec<String> {
        p.rx.borrow().keys().cloned().collect()
    }

    #[test]
    fn probes_and_acks_read_back_and_chitchat_messages_are_not_probes() {
        for p in [Probe::Ask { stamp: 7 }, Probe::Answer { stamp: u64::MAX }] {
            assert_eq!(Probe::parse(&p.encode()), Some(Ok(p)));
        }
        // Chitchat's messages start with their type (0 to 3).
        assert_eq!(Probe::parse(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]), None);
        assert_eq!(Probe::parse(&[]), None);
        let mut short = Probe::Ask { stamp: 1 }.encode();
        short.pop();
        assert!(matches!(Probe::parse(&short), Some(Err(_))));
        let mut long = Probe::Answer { stamp: 1 }.encode();
        long.push(0);
        assert!(matches!(Probe::parse(&long), Some(Err(_))));
    }

    #[test]
    fn every_other_member_is_probed_each_interval_and_no_sooner() {
        let mut p = probed();
        let t = trust(&[("a", 1), ("b", 1), ("c", 1)]);
        let due = p.reach.due(p.t0, &t);
        let to: Vec<&str> = due.iter().map(|d| d.node.as_str()).collect();
        assert_eq!(to, ["b", "c"]);
        assert_eq!(due[0].addr, "10.0.0.2:7946".parse().unwrap());
        assert!(p.reach.due(p.t0 + ms(100), &t).is_empty());
        assert_eq!(p.reach.due(p.t0 + ms(200), &t).len(), 2);
        assert_eq!(p.reach.next_due(), p.t0 + ms(400));
        // After a stall of 2 s: one round, the next one interval later.
        assert_eq!(p.reach.due(p.t0 + ms(2200), &t).len(), 2);
        assert_eq!(p.reach.next_due(), p.t0 + ms(2400));
    }

    #[test]
    fn a_member_that_stops_answering_is_unreachable_after_the_deadline_and_back_with_its_first_ack()
    {
        let mut p = probed();
        let t = trust(&[("a", 1), ("b", 1), ("c", 1)]);
        let mut now = p.t0;
        // Both answer for a while.
        for _ in 0..5 {
            let due = p.reach.due(now, &t);
            for node in ["b", "c"] {
                p.reach.answered(node, stamp_of(&due, node), now + ms(10));
            }
            now += ms(200);
        }
        assert!(unreachable(&p).is_empty());
        // b goes silent at `cut`: its last answered probe was sent at cut - 200 ms.
        let cut = now;
        let (mut seen, mut lost) = (None, None);
        while now < cut + ms(4000) {
            let due = p.reach.due(now, &t);
            p.reach.answered("c", stamp_of(&due, "c"), now + ms(10));
            if seen.is_none() && unreachable(&p) == ["b"] {
                seen = Some(now - cut);
                let b = p.rx.borrow()["b"];
                assert_eq!(
                    b,
                    Unanswered {
                        addr: "10.0.0.2".parse().unwrap(),
                        lost: false
                    }
                );
            }
            if lost.is_none() && p.rx.borrow().get("b").is_some_and(|b| b.lost) {
                lost = Some(now - cut);
            }
            now += ms(200);
        }
        // Unreachable 600 ms after its last answered probe was sent (at cut - 200 ms),
        // not before; its flows given up 3 s after it.
        assert_eq!(seen, Some(ms(400)), "{:?}", p.rx.borrow());
        assert_eq!(lost, Some(ms(2800)), "{:?}", p.rx.borrow());
        assert_eq!(unreachable(&p), ["b"]);
        assert_eq!((p.reach.judged_unreachable, p.reach.judged_back), (1, 0));
        // Its first ack brings it back at once.
        let due = p.reach.due(now, &t);
        p.reach.answered("b", stamp_of(&due, "b"), now + ms(30));
        assert!(unreachable(&p).is_empty());
        assert_eq!((p.reach.judged_unreachable, p.reach.judged_back), (1, 1));
    }

    #[test]
    fn flows_are_not_given_up_while_most_members_are_silent_at_once() {
        let mut p = probed();
        let t = trust(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)]);
        let mut now = p.t0;
        for _ in 0..5 {
            let due = p.reach.due(now, &t);
            for node in ["b", "c", "d"] {
                p.reach.answered(node, stamp_of(&due, node), now + ms(10));
            }
            now += ms(200);
        }
        // b and c (two of three) go silent together: unreachable, but their flows kept.
        let cut = now;
        while now < cut + ms(4000) {
            let due = p.reach.due(now, &t);
            p.reach.answered("d", stamp_of(&due, "d"), now + ms(10));
            now += ms(200);
        }
        assert_eq!(unreachable(&p), ["b", "c"]);
        assert!(
            p.rx.borrow().values().all(|u| !u.lost),
            "{:?}",
            p.rx.borrow()
        );
        // c answers again: b alone is silent, one of three, and its flows are given up.
        let due = p.reach.due(now, &t);
        p.reach.answered("c", stamp_of(&due, "c"), now + ms(10));
        p.reach.answered("d", stamp_of(&due, "d"), now + ms(10));
        now += ms(200);
        let _ = p.reach.due(now, &t);
        assert_eq!(unreachable(&p), ["b"]);
        assert!(p.rx.borrow()["b"].lost, "{:?}", p.rx.borrow());
    }

    #[test]
    fn a_node_starved_of_the_cpu_does_not_judge_its_peers_on_its_own_stall() {
        let mut p = probed();
        let t = trust(&[("a", 1), ("b", 1)]);
        let due = p.reach.due(p.t0, &t);
        p.reach.answered("b", stamp_of(&due, "b"), p.t0 + ms(5));
        // Nothing ran for 5 s; then the rounds go on and b's answers come in.
        let mut now = p.t0 + ms(5000);
        for _ in 0..3 {
            let due = p.reach.due(now, &t);
            assert!(unreachable(&p).is_empty(), "judged after a stall");
            p.reach.answered("b", stamp_of(&due, "b"), now + ms(5));
            now += ms(200);
        }
        assert_eq!(p.reach.judged_unreachable, 0);
    }

    #[test]
    fn a_member_that_never_answered_or_restarted_is_not_judged() {
        let mut p = probed();
        let t = trust(&[("a", 1), ("b", 1)]);
        let mut now = p.t0;
        for _ in 0..20 {
            p.reach.due(now, &t);
            now += ms(200);
        }
        assert!(unreachable(&p).is_empty(), "b never answered");
        let due = p.reach.due(now, &t);
        p.reach.answered("b", stamp_of(&due, "b"), now);
        for _ in 0..10 {
            now += ms(200);
            p.reach.due(now, &t);
        }
        assert_eq!(unreachable(&p), ["b"]);
        // A new generation of b: judged afresh, reachable until it has answered and
        // gone silent again.
        let restarted = trust(&[("a", 1), ("b", 2)]);
        now += ms(200);
        p.reach.due(now, &restarted);
        assert!(unreachable(&p).is_empty());
        // Removed from the members: forgotten.
        let due = p.reach.due(now + ms(200), &restarted);
        p.reach.answered("b", stamp_of(&due, "b"), now + ms(200));
        for _ in 0..10 {
            now += ms(200);
            p.reach.due(now + ms(200), &restarted);
        }
        assert_eq!(unreachable(&p), ["b"]);
        p.reach.due(now + ms(600), &trust(&[("a", 1)]));
        assert!(unreachable(&p).is_empty());
    }

    #[test]
    fn acks_that_this_node_could_not_have_asked_for_change_nothing() {
        let mut p = probed();
        let t = trust(&[("a", 1), ("b", 1)]);
        let due = p.reach.due(p.t0, &t);
        p.reach.answered("b", stamp_of(&due, "b"), p.t0);
        // An ack from a stranger, and one stamped in the future.
        p.reach.answered("z", 0, p.t0);
        let mut now = p.t0;
        for _ in 0..10 {
            now += ms(200);
            p.reach.due(now, &t);
            p.reach.answered("b", 60_000, now);
        }
        assert_eq!(unreachable(&p), ["b"]);
    }

    #[test]
    fn dropping_the_prober_leaves_no_member_unreachable() {
        let mut p = probed();
        let t = trust(&[("a", 1), ("b", 1)]);
        let due = p.reach.due(p.t0, &t);
        p.reach.answered("b", stamp_of(&due, "b"), p.t0);
        let mut now = p.t0;
        for _ in 0..10 {
            now += ms(200);
            p.reach.due(now, &t);
        }
        assert_eq!(unreachable(&p), ["b"]);
        let rx = p.rx.clone();
        drop(p);
        assert!(rx.borrow().is_empty());
    }
}
