//! Port 2377's input path driven with bytes instead of a socket, for the fuzz target
//! `manager_port` (`fuzz/` at the top of the repository) and the tests below.
//!
//! [`ManagerPort::take`] runs, on what one caller sent after its TLS handshake, the
//! functions the listener itself runs (`runtime::accept`): the frame read under the
//! caller's bound and the request decoded ([`wire::read_request`]); for a caller without
//! a certificate, a `Join` is the only request that goes further, and its token is
//! checked against the join tokens ([`check_token`]), then, with a valid token, its CSR
//! and address ([`check_join_request`]); a node's request is read and classified by what
//! it needs ([`needs`]). Nothing is written and no store is involved: what follows those
//! steps needs a caller the store knows.

use std::net::IpAddr;
use std::time::Duration;

use super::runtime::{check_join_request, check_token, needs, MAX_JOIN_FRAME, MAX_NODE_FRAME};
use super::wire::{self, Request, MAX_FRAME};
use super::{ClusterError, NodeInfo, Role, Timings};
use crate::pki::{new_node_id, ClusterCa, NodeIdentity};
use crate::store::{
    Availability, ClusterState, Command, RaftRequest, TaskState, TaskStatus, TaskStatusUpdate,
};
use crate::token::{JoinToken, JoinTokens};

/// Who sent the bytes, as the TLS handshake told the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Caller {
    /// No certificate of this cluster: at most one frame of [`MAX_JOIN_FRAME`] bytes.
    Stranger,
    /// A worker's certificate: frames of at most 4 MiB.
    Worker,
    /// A manager's certificate: frames of at most 64 MiB (Raft snapshots).
    Manager,
}

impl Caller {
    /// The largest frame the listener reads from this caller.
    pub fn max_frame(self) -> usize {
        match self {
            Caller::Stranger => MAX_JOIN_FRAME,
            Caller::Worker => MAX_NODE_FRAME,
            Caller::Manager => MAX_FRAME,
        }
    }
}

/// What the listener makes of the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The stream ended before a frame's length: the connection ends, nothing answered.
    Closed,
    /// A frame over the caller's bound (refused on its length, nothing allocated) or cut
    /// short: the connection ends, nothing answered.
    FrameRefused,
    /// The frame's body is not a request: answered with the reason.
    NotARequest,
    /// A stranger's request other than a join: answered that it needs a certificate.
    NeedsCertificate(&'static str),
    /// A join whose token was refused (malformed, another cluster's, wrong or rotated).
    TokenRefused,
    /// A join with a valid token whose CSR or advertise address was refused.
    JoinRefused,
    /// A join that passed every check made before the node is recorded, for this role.
    JoinChecked(Role),
    /// A node's request, read: next come the store's checks of its caller, then its
    /// handler.
    Request { name: &'static str, needs: Role },
}

/// The listener's input path over bytes, with its own tokio runtime (the frame reader's
/// timeouts need a timer) and the join tokens and CA that a join is checked against.
pub struct ManagerPort {
    runtime: tokio::runtime::Runtime,
    state: ClusterState,
    ca: ClusterCa,
    timings: Timings,
}

/// The node ID a checked join's CSR is issued for (a real join draws a fresh one).
const JOINING_NODE_ID: &str = "fuzzjoiner";

/// The worker token of [`ManagerPort::fixed`]: a constant, so that saved inputs can
/// hold a valid one.
pub const WORKER_TOKEN: &str =
    "SWMTKN-1-00000000000000000000123456789abcdefghijklmnopqrstu-00000abcdefghij0123456789";
/// The manager token of [`ManagerPort::fixed`].
pub const MANAGER_TOKEN: &str =
    "SWMTKN-1-00000000000000000000123456789abcdefghijklmnopqrstu-00000zyxwvutsrq9876543210";

impl ManagerPort {
    /// Joins are checked against `tokens`; CSRs are checked by a CA of its own.
    pub fn new(tokens: &JoinTokens) -> Result<ManagerPort, ClusterError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| ClusterError::Protocol(format!("a runtime for the port: {e}")))?;
        let state = ClusterState {
            tokens: Some(
                serde_json::to_value(tokens).map_err(|e| ClusterError::Protocol(e.to_string()))?,
            ),
            ..ClusterState::default()
        };
        let ca = ClusterCa::new("fuzz").map_err(|e| ClusterError::Protocol(e.to_string()))?;
        Ok(ManagerPort {
            runtime,
            state,
            ca,
            timings: Timings::default(),
        })
    }

    /// A port whose join tokens are [`WORKER_TOKEN`] and [`MANAGER_TOKEN`].
    pub fn fixed() -> Result<ManagerPort, ClusterError> {
        let parse =
            |text| JoinToken::parse(text).map_err(|e| ClusterError::MalformedToken(e.to_string()));
        ManagerPort::new(&JoinTokens {
            worker: parse(WORKER_TOKEN)?,
            manager: parse(MANAGER_TOKEN)?,
        })
    }

    /// What the listener makes of an input whose first byte names the caller (`0` a
    /// stranger, `1` a worker, `2` a manager) and whose rest is what it sent; `None` for
    /// an input naming no caller.
    pub fn take_input(&self, input: &[u8]) -> Option<Outcome> {
        let (&caller, bytes) = input.split_first()?;
        let caller = match caller {
            0 => Caller::Stranger,
            1 => Caller::Worker,
            2 => Caller::Manager,
            _ => return None,
        };
        Some(self.take(caller, bytes))
    }

    /// What the listener makes of `bytes` from `caller`: its first frame, read and
    /// checked as far as a caller that is not in the store gets.
    pub fn take(&self, caller: Caller, bytes: &[u8]) -> Outcome {
        let mut stream = bytes;
        let read = self.runtime.block_on(wire::read_request(
            &mut stream,
            caller.max_frame(),
            Duration::from_secs(10),
        ));
        let request = match read {
            Ok(None) => return Outcome::Closed,
            Err(_) => return Outcome::FrameRefused,
            Ok(Some(Err(_))) => return Outcome::NotARequest,
            Ok(Some(Ok(request))) => request,
        };
        match (caller, request) {
            (
                Caller::Stranger,
                Request::Join {
                    token,
                    csr_pem,
                    advertise,
                    ..
                },
            ) => {
                let Ok(role) = check_token(&self.state, &token) else {
                    return Outcome::TokenRefused;
                };
                match check_join_request(
                    &self.ca,
                    &self.timings,
                    role,
                    JOINING_NODE_ID,
                    &csr_pem,
                    &advertise,
                ) {
                    Ok(_) => Outcome::JoinChecked(role),
                    Err(_) => Outcome::JoinRefused,
                }
            }
            (Caller::Stranger, request) => Outcome::NeedsCertificate(request.name()),
            (_, request) => Outcome::Request {
                name: request.name(),
                needs: needs(&request).role,
            },
        }
    }
}

/// Inputs for [`ManagerPort::take_input`] that reach each step (named, for a corpus):
/// joins with [`ManagerPort::fixed`]'s tokens and a real CSR, a join with another
/// cluster's token, and nodes' requests of several kinds.
pub fn seed_inputs() -> Result<Vec<(&'static str, Vec<u8>)>, ClusterError> {
    let (_key, csr) = NodeIdentity::generate_key_and_csr(&new_node_id())?;
    let node = NodeInfo {
        hostname: "h1".into(),
        engine_version: "28.2.2".into(),
        resources: Default::default(),
        addr: IpAddr::from([192, 168, 77, 11]),
        data_path_addr: Some(IpAddr::from([192, 168, 78, 11])),
        labels: [("zone".to_string(), "a".to_string())].into(),
    };
    let join = |token: &str| Request::Join {
        token: token.into(),
        csr_pem: csr.pem(),
        node: node.clone(),
        advertise: "192.168.77.11:2377".into(),
    };
    let other_cluster = JoinToken::generate(ClusterCa::new("other")?.digest()).expose_secret();
    let report = TaskStatusUpdate {
        task_id: "t1".into(),
        status: TaskStatus {
            state: TaskState::Running,
            timestamp_ms: 1,
            message: "started".into(),
            err: None,
            container_id: Some("c1".into()),
            exit_code: None,
        },
    };
    let requests = [
        ("join_worker", Caller::Stranger, join(WORKER_TOKEN)),
        ("join_manager", Caller::Stranger, join(MANAGER_TOKEN)),
        ("join_other_cluster", Caller::Stranger, join(&other_cluster)),
        ("stranger_leave", Caller::Stranger, Request::Leave),
        (
            "heartbeat",
            Caller::Worker,
            Request::Heartbeat {
                node: node.clone(),
                tls: None,
                traffic: None,
            },
        ),
        (
            "node_state",
            Caller::Worker,
            Request::NodeState {
                since: 3,
                applied: Some(2),
            },
        ),
        (
            "report_tasks",
            Caller::Worker,
            Request::ReportTasks {
                updates: vec![report],
            },
        ),
        (
            "renew",
            Caller::Worker,
            Request::Renew { csr_pem: csr.pem() },
        ),
        (
            "raft_vote",
            Caller::Manager,
            Request::Raft(RaftRequest::Vote(openraft::raft::VoteRequest::new(
                openraft::Vote::new(1, 1),
                None,
            ))),
        ),
        (
            "execute",
            Caller::Manager,
            Request::Execute(Command::SetAvailability {
                id: "n1".into(),
                availability: Availability::Drain,
            }),
        ),
        (
            "remove_node",
            Caller::Manager,
            Request::RemoveNode {
                node_id: "n1".into(),
                force: true,
            },
        ),
    ];
    requests
        .into_iter()
        .map(|(name, caller, request)| {
            let body =
                serde_json::to_vec(&request).map_err(|e| ClusterError::Protocol(e.to_string()))?;
            let mut input = vec![caller as u8];
            input.extend_from_slice(&(body.len() as u32).to_be_bytes());
            input.extend_from_slice(&body);
            Ok((name, input))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    fn join(token: &str, csr_pem: &str, advertise: &str) -> Vec<u8> {
        let request = Request::Join {
            token: token.into(),
            csr_pem: csr_pem.into(),
            node: NodeInfo {
                hostname: "h1".into(),
                engine_version: "28.2.2".into(),
                resources: Default::default(),
                addr: "192.168.77.11".parse().unwrap(),
                data_path_addr: None,
                labels: Default::default(),
            },
            advertise: advertise.into(),
        };
        frame(&serde_json::to_vec(&request).unwrap())
    }

    #[test]
    fn a_stranger_gets_as_far_as_its_token_and_csr_allow() {
        let ca = ClusterCa::new("c1").unwrap();
        let tokens = JoinTokens::generate(ca.digest());
        let port = ManagerPort::new(&tokens).unwrap();
        let (_key, csr) = NodeIdentity::generate_key_and_csr(&new_node_id()).unwrap();
        let worker = tokens.worker.expose_secret();
        let manager = tokens.manager.expose_secret();

        let take = |bytes: &[u8]| port.take(Caller::Stranger, bytes);
        assert_eq!(
            take(&join(&worker, &csr.pem(), "192.168.77.11:2377")),
            Outcome::JoinChecked(Role::Worker)
        );
        assert_eq!(
            take(&join(&manager, &csr.pem(), "192.168.77.11:2377")),
            Outcome::JoinChecked(Role::Manager)
        );
        let other = JoinToken::generate(ClusterCa::new("c2").unwrap().digest()).expose_secret();
        assert_eq!(
            take(&join(&other, &csr.pem(), "192.168.77.11:2377")),
            Outcome::TokenRefused
        );
        assert_eq!(
            take(&join("SWMTKN-1-junk", &csr.pem(), "x")),
            Outcome::TokenRefused
        );
        assert_eq!(
            take(&join(&worker, "not a CSR", "192.168.77.11:2377")),
            Outcome::JoinRefused
        );
        assert_eq!(
            take(&join(&worker, &csr.pem(), "no address")),
            Outcome::JoinRefused
        );
        let leave = frame(br#""leave""#);
        assert_eq!(take(&leave), Outcome::NeedsCertificate("leave"));
        assert_eq!(take(&frame(b"{not json")), Outcome::NotARequest);
        assert_eq!(take(b""), Outcome::Closed);
        assert_eq!(take(&[0, 0]), Outcome::Closed);
    }

    #[test]
    fn frames_are_bounded_by_the_caller_before_anything_is_read() {
        let ca = ClusterCa::new("c1").unwrap();
        let port = ManagerPort::new(&JoinTokens::generate(ca.digest())).unwrap();
        // A length one over the bound is refused with no body behind it: nothing was
        // allocated or waited for.
        for caller in [Caller::Stranger, Caller::Worker, Caller::Manager] {
            let over = (caller.max_frame() as u32 + 1).to_be_bytes();
            assert_eq!(
                port.take(caller, &over),
                Outcome::FrameRefused,
                "{caller:?}"
            );
        }
        // A body shorter than its length ends the connection.
        let mut cut = frame(br#""leave""#);
        cut.pop();
        assert_eq!(port.take(Caller::Worker, &cut), Outcome::FrameRefused);
        // A frame of 16 KiB + 1 is a stranger's refusal, a worker's request.
        let mut big = br#"{"node_state":{"since":1,"pad":""#.to_vec();
        big.resize(MAX_JOIN_FRAME - 2, b' ');
        big.extend_from_slice(br#""}}"#);
        assert_eq!(big.len(), MAX_JOIN_FRAME + 1);
        assert_eq!(
            port.take(Caller::Stranger, &frame(&big)),
            Outcome::FrameRefused
        );
        assert_eq!(
            port.take(Caller::Worker, &frame(&big)),
            Outcome::Request {
                name: "node_state",
                needs: Role::Worker
            }
        );
        assert_eq!(
            port.take(Caller::Manager, &frame(br#""read_state""#)),
            Outcome::Request {
                name: "read_state",
                needs: Role::Manager
            }
        );
    }

    #[test]
    fn the_seed_inputs_reach_each_step() {
        let port = ManagerPort::fixed().unwrap();
        let outcomes: Vec<(&str, Option<Outcome>)> = seed_inputs()
            .unwrap()
            .into_iter()
            .map(|(name, input)| (name, port.take_input(&input)))
            .collect();
        let request = |name, needs| Some(Outcome::Request { name, needs });
        assert_eq!(
            outcomes,
            vec![
                ("join_worker", Some(Outcome::JoinChecked(Role::Worker))),
                ("join_manager", Some(Outcome::JoinChecked(Role::Manager))),
                ("join_other_cluster", Some(Outcome::TokenRefused)),
                ("stranger_leave", Some(Outcome::NeedsCertificate("leave"))),
                ("heartbeat", request("heartbeat", Role::Worker)),
                ("node_state", request("node_state", Role::Worker)),
                ("report_tasks", request("report_tasks", Role::Worker)),
                ("renew", request("renew", Role::Worker)),
                ("raft_vote", request("raft", Role::Manager)),
                ("execute", request("execute", Role::Manager)),
                ("remove_node", request("remove_node", Role::Manager)),
            ]
        );
        assert_eq!(port.take_input(&[3, 0, 0, 0, 0]), None);
    }
}
