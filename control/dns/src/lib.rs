//! shoal's embedded DNS resolver.
//!
//! Module map:
//! - [`records`]: the declared DNS state (services, tasks, containers, aliases per
//!   network) and the record table built from it, which answers name lookups scoped to
//!   the networks of the asking container.
//! - [`handler`]: the hickory-server request handler: local answers from the table,
//!   everything else through [`forward`].
//! - [`forward`]: relays queries for other names to the node's upstream resolvers.
//! - [`server`]: binds the resolver's sockets and serves until shut down.

pub mod forward;
pub mod handler;
pub mod records;
pub mod server;
pub mod stats;
