//! Compose files for `shoal stack deploy`: reading them (variable interpolation, `.env`
//! beside the file, several files merged as docker does), and turning each service into
//! shoal's [`ServiceSpec`](shoal_cluster::store::ServiceSpec) through the Engine API's conversion of Docker's `ServiceSpec`
//! ([`crate::engine_api::service_spec::from_docker`]), so the rules live in one place.
//!
//! Names are `<stack>_<name>`, labelled `com.docker.stack.namespace=<stack>`. Keys Swarm
//! ignores are warned about and skipped; keys shoal's service spec cannot carry yet are
//! refused ([`UNSUPPORTED_KEYS`]).
//!
//! One job a file: `interpolation` (`${VAR}` forms, `.env`), `files` (parsing and
//! merging), `volumes` (top-level volumes and a service's mounts), `service` (one
//! service's container, ports, networks), `deploy` (its `deploy` section).

mod deploy;
mod files;
mod interpolation;
mod service;
#[cfg(test)]
mod tests;
mod volumes;

use std::path::Path;

use shoal_cluster::store::ObjectKind;

use super::extras::{self, StackObject};
pub use files::{load, merge, parse, Merged};
pub use interpolation::{interpolate, parse_env_file};
pub use service::{convert_service, read_env_file, Converted};
pub use volumes::{top_volumes, TopVolumes};

/// The label naming a stack on its services, networks, secrets and configs.
pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";

/// Service keys Swarm ignores: warned about, then skipped.
pub const IGNORED_KEYS: &[&str] = &["container_name", "depends_on", "build", "restart", "links"];

/// Service keys shoal's service spec cannot carry yet: a file using one is refused,
/// naming the key and the service.
pub const UNSUPPORTED_KEYS: &[&str] = &[
    "deploy.resources.limits.devices",
    "deploy.resources.reservations.devices",
    "healthcheck.start_interval",
];

/// The error refusing service `name`'s compose key `key`.
fn refusal(name: &str, key: &str) -> String {
    format!("service {name}: {key} is not supported by shoal's services yet")
}

/// A stack as the files declare it: its services, secrets and configs.
#[derive(Debug)]
pub struct Stack {
    pub services: Vec<Converted>,
    /// Secrets, then configs.
    pub objects: Vec<StackObject>,
}

/// Every service of the files converted, in the file's order, and every top-level
/// secret and config read (files relative to `dir`); the first error stops it (so
/// nothing is deployed from a file with a mistake).
pub fn convert(stack: &str, merged: &Merged, dir: &Path) -> Result<Stack, String> {
    let compose = &merged.compose;
    if compose.services.is_empty() {
        return Err("the compose files have no services".into());
    }
    let volumes = top_volumes(compose)?;
    let services = compose
        .services
        .0
        .iter()
        .map(|(name, s)| {
            convert_service(
                stack,
                name,
                &s.clone().unwrap_or_default(),
                dir,
                &volumes,
                &merged.extras,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut objects = extras::objects(stack, ObjectKind::Secret, &merged.extras, dir)?;
    objects.extend(extras::objects(
        stack,
        ObjectKind::Config,
        &merged.extras,
        dir,
    )?);
    Ok(Stack { services, objects })
}
