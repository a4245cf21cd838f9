//! shoal's orchestrator: what turns the cluster's desired state into this node's work.
//!
//! - [`scheduler`]: on the leader, places tasks on nodes and gives them addresses
//!   (from `shoal_cluster::ipam`);
//! - [`executor`]: on every node, runs the tasks placed here on the node's dockerd and
//!   reports their states; [`sandbox`]: each task's network namespace, held by a small
//!   container and plumbed before the task's process starts;
//! - [`node_state`]: the node's declared overlay, DNS and load-balancing state, from
//!   the store's view and the gossip table;
//! - [`gossip_member`], [`gossip_keys`]: the node's gossip member and the cluster key's
//!   rotation;
//! - [`docker`]: the dockerd client (containers, their namespaces, events);
//!   [`image`]: image references, pulls and digests through it;
//!   [`events`]: the agent's one dockerd event watch, shared;
//! - [`task_template`]: Docker's `{{.Service.Name}}`-style templates (`--hostname`);
//! - [`pipeline`]: the node's declared state, with its containers' namespaces, as one
//!   in-memory value the dataplane's reconcilers follow.

pub mod attach;
pub mod docker;
pub mod events;
pub mod executor;
pub mod gossip_keys;
pub mod gossip_member;
pub mod image;
pub mod node_report;
pub mod node_state;
pub mod pipeline;
pub mod sandbox;
pub mod scheduler;
pub mod task_template;
