//! Applying a command: [`ClusterState::apply`] checks it against the state (a refusal
//! changes nothing), then makes the change and raises the version.

use super::{ApplyResult, ClusterState, Command, Node, ObjectKind, Rejection, MAX_GOSSIP_KEYS};
use crate::store::data_object::{check_references, DataObject, FileReference};
use crate::store::service::{Service, ServiceSpec, Task, TaskState};

impl ClusterState {
    /// Applies one command. Deterministic; a refusal leaves the state untouched.
    pub fn apply(&mut self, command: &Command) -> ApplyResult {
        match self.check(command) {
            Ok(()) => {
                self.version += 1;
                self.change(command);
                ApplyResult::Applied {
                    version: self.version,
                }
            }
            Err(rejection) => ApplyResult::Rejected {
                version: self.version,
                rejection,
            },
        }
    }

    /// Whether `command` may be applied, without changing anything.
    fn check(&self, command: &Command) -> Result<(), Rejection> {
        let node = |id: &String| {
            if self.nodes.contains_key(id) {
                Ok(())
            } else {
                Err(Rejection::UnknownNode { id: id.clone() })
            }
        };
        let nonempty = |what: &str, value: &str| {
            if value.is_empty() {
                Err(Rejection::Invalid {
                    what: what.to_string(),
                    detail: "must not be empty".to_string(),
                })
            } else {
                Ok(())
            }
        };
        match command {
            Command::UpsertNode { node } => {
                nonempty("node ID", &node.id)?;
                if self.removed_nodes.contains_key(&node.id) {
                    return Err(Rejection::Invalid {
                        what: "node".into(),
                        detail: format!("node {} was removed from the cluster", node.id),
                    });
                }
                Ok(())
            }
            Command::RevokeNode { id, .. } => nonempty("node ID", id),
            Command::SetNodeGossip { id, gossip } => {
                let n = self
                    .nodes
                    .get(id)
                    .ok_or_else(|| Rejection::UnknownNode { id: id.clone() })?;
                match gossip.fault(n) {
                    Some(detail) => Err(Rejection::Invalid {
                        what: "gossip identity".into(),
                        detail,
                    }),
                    None => Ok(()),
                }
            }
            Command::RemoveNode { id }
            | Command::SetAvailability { id, .. }
            | Command::SetRole { id, .. }
            | Command::SetStatus { id, .. }
            | Command::UpdateNodeLabels { id, .. }
            | Command::RotateWireguardKey { id } => node(id),
            Command::UpsertNetwork { network } => {
                nonempty("network ID", &network.id)?;
                nonempty("network name", &network.name)?;
                match self
                    .networks
                    .values()
                    .find(|n| n.name == network.name && n.id != network.id)
                {
                    Some(other) => Err(Rejection::DuplicateNetworkName {
                        name: network.name.clone(),
                        existing_id: other.id.clone(),
                    }),
                    None => Ok(()),
                }
            }
            Command::RemoveNetwork { id } => {
                if !self.networks.contains_key(id) {
                    return Err(Rejection::UnknownNetwork { id: id.clone() });
                }
                if let Some(s) = self
                    .services
                    .values()
                    .find(|s| s.spec.networks.contains(id))
                {
                    return Err(Rejection::NetworkInUse {
                        network: self.networks[id].name.clone(),
                        service: s.spec.name.clone(),
                    });
                }
                match self.attachments.values().find(|a| &a.network_id == id) {
                    Some(a) => Err(Rejection::NetworkHasEndpoints {
                        network: self.networks[id].name.clone(),
                        container: a.container_name.clone(),
                        node: a.node_id.clone(),
                    }),
                    None => Ok(()),
                }
            }
            Command::UpsertService { id, spec } => {
                nonempty("service ID", id)?;
                match serde_json::from_value::<Service>(spec.clone()) {
                    Ok(s) if s.id == *id => self.check_service(&s),
                    Ok(_) => Err(Rejection::Invalid {
                        what: "service".into(),
                        detail: "the spec's ID differs from the command's".into(),
                    }),
                    Err(e) => Err(Rejection::Invalid {
                        what: "service".into(),
                        detail: e.to_string(),
                    }),
                }
            }
            Command::CreateService { service } => {
                if self.services.contains_key(&service.id) {
                    return Err(Rejection::Invalid {
                        what: "service ID".into(),
                        detail: format!("{} is already used", service.id),
                    });
                }
                self.check_service(service)
            }
            Command::UpdateService { service } => {
                if !self.services.contains_key(&service.id) {
                    return Err(Rejection::UnknownService {
                        id: service.id.clone(),
                    });
                }
                self.check_service(service)
            }
            Command::UpdateServiceIfUnchanged { service, version } => {
                match self.services.get(&service.id) {
                    None => Err(Rejection::UnknownService {
                        id: service.id.clone(),
                    }),
                    Some(s) if s.version != *version => Err(Rejection::StaleService {
                        id: service.id.clone(),
                        version: *version,
                    }),
                    Some(_) => self.check_service(service),
                }
            }
            Command::PutTasks { tasks } => {
                for t in tasks {
                    nonempty("task ID", &t.id)?;
                    nonempty("task's service ID", &t.service_id)?;
                }
                Ok(())
            }
            Command::RemoveTasks { .. } | Command::UpdateTaskStatus { .. } => Ok(()),
            Command::SetNodeAttachments {
                node_id,
                wanted,
                new_ids,
            } => {
                node(node_id)?;
                super::attachment::check_wanted(self, node_id, wanted, new_ids)
            }
            Command::SetAttachmentAddresses { .. } => Ok(()),
            Command::RemoveService { id } => {
                if self.services.contains_key(id) {
                    Ok(())
                } else {
                    Err(Rejection::UnknownService { id: id.clone() })
                }
            }
            Command::SetTokens { .. } => Ok(()),
            Command::SetNodeTls { id, .. } => node(id),
            Command::StartCaRotation {
                rotation,
                registry_keys,
                ..
            } => super::ca::check_start(self, rotation, registry_keys).map_err(|detail| {
                Rejection::Invalid {
                    what: "root CA rotation".into(),
                    detail,
                }
            }),
            Command::FinishCaRotation { to, .. } => match self.ca_rotation_target() {
                Some(target) if target == *to => Ok(()),
                Some(target) => Err(Rejection::Invalid {
                    what: "root CA rotation".into(),
                    detail: format!("the rotation under way moves to {target}, not {to}"),
                }),
                None => Err(Rejection::Invalid {
                    what: "root CA rotation".into(),
                    detail: "no rotation is in progress".into(),
                }),
            },
            Command::SetCluster { cluster } => nonempty("cluster ID", &cluster.id),
            Command::SetGossipKeys { keys } => {
                let invalid = |detail: &str| Rejection::Invalid {
                    what: "gossip keys".into(),
                    detail: detail.into(),
                };
                if keys.is_empty() || keys.len() > MAX_GOSSIP_KEYS {
                    return Err(invalid(&format!(
                        "1 to {MAX_GOSSIP_KEYS} keys, got {}",
                        keys.len()
                    )));
                }
                let mut ids: Vec<u32> = keys.iter().map(|k| k.id).collect();
                ids.sort_unstable();
                if ids.windows(2).any(|w| w[0] == w[1]) {
                    return Err(invalid("two keys share one ID"));
                }
                if keys.iter().any(|k| {
                    k.secret.len() != 64 || !k.secret.bytes().all(|b| b.is_ascii_hexdigit())
                }) {
                    return Err(invalid("a secret is not 64 hex digits"));
                }
                Ok(())
            }
            Command::SetAutolock { unlock_key } => match unlock_key {
                Some(k) if crate::seal::KeyEncryptionKey::decode(&k.key).is_err() => {
                    Err(Rejection::Invalid {
                        what: "unlock key".into(),
                        detail: "not 32 bytes in base64".into(),
                    })
                }
                _ => Ok(()),
            },
            Command::UpsertObject { kind, id, spec } => {
                nonempty(&format!("{kind} ID"), id)?;
                if *kind == ObjectKind::Task {
                    match serde_json::from_value::<Task>(spec.clone()) {
                        Ok(t) if t.id == *id => Ok(()),
                        Ok(_) => Err(Rejection::Invalid {
                            what: "task".into(),
                            detail: "the spec's ID differs from the command's".into(),
                        }),
                        Err(e) => Err(Rejection::Invalid {
                            what: "task".into(),
                            detail: e.to_string(),
                        }),
                    }
                } else {
                    self.check_data_object(*kind, id, spec)
                }
            }
            Command::RemoveObject { kind, id } => {
                if !self.has_object(*kind, id) {
                    return Err(Rejection::UnknownObject {
                        kind: *kind,
                        id: id.clone(),
                    });
                }
                match self.data_object_user(*kind, id) {
                    Some(service) => Err(Rejection::ObjectInUse {
                        kind: *kind,
                        name: self.data_objects(*kind)[id].name.clone(),
                        service,
                    }),
                    None => Ok(()),
                }
            }
        }
    }

    /// A secret or config that may be stored: of its shape, with the command's ID, its
    /// data within Swarm's bounds, a name unused by another of its kind; an existing one
    /// keeps its data.
    fn check_data_object(
        &self,
        kind: ObjectKind,
        id: &str,
        spec: &serde_json::Value,
    ) -> Result<(), Rejection> {
        let invalid = |detail: String| Rejection::Invalid {
            what: kind.to_string(),
            detail,
        };
        let o: DataObject =
            serde_json::from_value(spec.clone()).map_err(|e| invalid(e.to_string()))?;
        if o.id != id {
            return Err(invalid("the spec's ID differs from the command's".into()));
        }
        if o.name.is_empty() {
            return Err(invalid("the name must not be empty".into()));
        }
        if let Some(p) = DataObject::data_problem(&kind.to_string(), &o.data) {
            return Err(invalid(p));
        }
        let objects = self.data_objects(kind);
        if let Some(other) = objects.values().find(|x| x.name == o.name && x.id != id) {
            return Err(Rejection::DuplicateObjectName {
                kind,
                name: o.name,
                existing_id: other.id.clone(),
            });
        }
        match objects.get(id) {
            Some(old) if old.data != o.data || old.name != o.name => Err(invalid(
                "only the labels of an existing one may change (its name and data cannot)".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The name of a service (or a service whose task still runs) using secret or config
    /// `id` of `kind`.
    fn data_object_user(&self, kind: ObjectKind, id: &str) -> Option<String> {
        let uses = |spec: &ServiceSpec| {
            let refs: &[FileReference] = match kind {
                ObjectKind::Config => &spec.configs,
                _ => &spec.secrets,
            };
            refs.iter().any(|r| r.id == id)
        };
        if let Some(s) = self.services.values().find(|s| uses(&s.spec)) {
            return Some(s.spec.name.clone());
        }
        self.tasks
            .values()
            .filter(|t| !t.status.state.is_terminal() && t.desired_state <= TaskState::Running)
            .find(|t| t.spec.as_deref().is_some_and(uses))
            .map(|t| {
                self.services
                    .get(&t.service_id)
                    .map_or_else(|| t.service_id.clone(), |s| s.spec.name.clone())
            })
    }

    /// A service spec that may be stored: a name, unique; an image; existing networks;
    /// published ports not used by another service; existing secrets and configs, each
    /// on its own file.
    fn check_service(&self, s: &Service) -> Result<(), Rejection> {
        let invalid = |what: &str, detail: String| {
            Err(Rejection::Invalid {
                what: what.to_string(),
                detail,
            })
        };
        if s.id.is_empty() {
            return invalid("service ID", "must not be empty".into());
        }
        if s.spec.name.is_empty() {
            return invalid("service name", "must not be empty".into());
        }
        if s.spec.image.is_empty() {
            return invalid("image", "must not be empty".into());
        }
        if let Some(other) = self
            .services
            .values()
            .find(|o| o.spec.name == s.spec.name && o.id != s.id)
        {
            return Err(Rejection::DuplicateServiceName {
                name: s.spec.name.clone(),
                existing_id: other.id.clone(),
            });
        }
        for n in &s.spec.networks {
            if !self.networks.contains_key(n) {
                return Err(Rejection::UnknownNetwork { id: n.clone() });
            }
        }
        for (kind, refs) in [
            (ObjectKind::Secret, &s.spec.secrets),
            (ObjectKind::Config, &s.spec.configs),
        ] {
            check_references(&kind.to_string(), refs).map_err(|detail| Rejection::Invalid {
                what: "service".into(),
                detail,
            })?;
            if let Some(r) = refs
                .iter()
                .find(|r| !self.data_objects(kind).contains_key(&r.id))
            {
                return Err(Rejection::UnknownObject {
                    kind,
                    id: r.name.clone(),
                });
            }
        }
        for p in &s.spec.ports {
            if p.published == 0 || p.target == 0 {
                return invalid(
                    "port",
                    "published and target ports must be 1..=65535".into(),
                );
            }
            let clash = self.services.values().filter(|o| o.id != s.id).find(|o| {
                o.spec
                    .ports
                    .iter()
                    .any(|q| q.published == p.published && q.protocol == p.protocol)
            });
            if let Some(o) = clash {
                return Err(Rejection::PortInUse {
                    port: p.published,
                    protocol: format!("{:?}", p.protocol).to_lowercase(),
                    service: o.spec.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// Makes the change; `check` has passed and `self.version` is the new version.
    fn change(&mut self, command: &Command) {
        let version = self.version;
        let mut touch = |id: &String, f: &mut dyn FnMut(&mut Node)| {
            if let Some(node) = self.nodes.get_mut(id) {
                f(node);
                node.version = version;
            }
        };
        match command {
            Command::UpsertNode { node } => {
                let mut node = node.clone();
                node.version = version;
                self.nodes.insert(node.id.clone(), node);
            }
            Command::RemoveNode { id } => {
                self.nodes.remove(id);
                self.attachments.retain(|_, a| &a.node_id != id);
            }
            Command::RevokeNode {
                id,
                at_ms,
                until_ms,
            } => {
                self.removed_nodes.retain(|_, r| r.until_ms >= *at_ms);
                self.removed_nodes.insert(
                    id.clone(),
                    super::RemovedNode {
                        at_ms: *at_ms,
                        until_ms: *until_ms,
                    },
                );
            }
            Command::SetAvailability { id, availability } => {
                touch(id, &mut |n| n.availability = *availability)
            }
            Command::SetRole { id, role, raft_id } => touch(id, &mut |n| {
                n.role = *role;
                n.raft_id = *raft_id;
            }),
            Command::SetStatus { id, status } => touch(id, &mut |n| n.status = *status),
            Command::SetNodeGossip { id, gossip } => {
                touch(id, &mut |n| n.gossip = Some(Box::new(gossip.clone())))
            }
            Command::UpdateNodeLabels { id, add, remove } => touch(id, &mut |n| {
                for key in remove {
                    n.labels.remove(key);
                }
                n.labels
                    .extend(add.iter().map(|(k, v)| (k.clone(), v.clone())));
            }),
            Command::RotateWireguardKey { id } => touch(id, &mut |n| {
                n.wireguard_rotation = n.wireguard_rotation.saturating_add(1)
            }),
            Command::UpsertNetwork { network } => {
                let mut network = network.clone();
                network.version = version;
                self.networks.insert(network.id.clone(), network);
            }
            Command::RemoveNetwork { id } => {
                self.networks.remove(id);
            }
            Command::UpsertService { spec, .. } => {
                if let Ok(mut service) = serde_json::from_value::<Service>(spec.clone()) {
                    service.version = version;
                    self.services.insert(service.id.clone(), service);
                }
            }
            Command::CreateService { service }
            | Command::UpdateService { service }
            | Command::UpdateServiceIfUnchanged { service, .. } => {
                let mut service = (**service).clone();
                service.version = version;
                self.services.insert(service.id.clone(), service);
            }
            Command::RemoveService { id } => {
                self.services.remove(id);
                for t in self.tasks.values_mut() {
                    if t.service_id == *id && t.desired_state < TaskState::Remove {
                        t.desired_state = TaskState::Remove;
                        t.version = version;
                    }
                }
            }
            Command::PutTasks { tasks } => {
                for t in tasks {
                    let mut t = t.clone();
                    t.version = version;
                    self.tasks.insert(t.id.clone(), t);
                }
            }
            Command::RemoveTasks { ids } => {
                for id in ids {
                    self.tasks.remove(id);
                }
            }
            Command::UpdateTaskStatus { node_id, updates } => {
                for u in updates {
                    if let Some(t) = self.tasks.get_mut(&u.task_id) {
                        if t.node_id.as_deref() == Some(node_id.as_str())
                            && u.status.state >= t.status.state
                        {
                            t.status = u.status.clone();
                            t.version = version;
                        }
                    }
                }
            }
            Command::SetNodeAttachments {
                node_id,
                wanted,
                new_ids,
            } => super::attachment::set_wanted(
                &mut self.attachments,
                node_id,
                wanted,
                new_ids,
                version,
            ),
            Command::SetAttachmentAddresses { addresses } => {
                for (id, addr) in addresses {
                    if let Some(a) = self.attachments.get_mut(id) {
                        if a.addr.is_none() {
                            a.addr = Some(*addr);
                            a.version = version;
                        }
                    }
                }
            }
            Command::SetTokens { tokens } => {
                self.tokens = Some(tokens.clone());
                self.swarm_version = version;
            }
            Command::SetNodeTls { id, tls } => touch(id, &mut |n| n.tls = Some(Box::new(*tls))),
            Command::StartCaRotation {
                rotation,
                registry_keys,
                resealed,
            } => {
                self.ca_rotation = Some((**rotation).clone());
                self.registry_keys = registry_keys.clone();
                self.swarm_version = version;
                for r in resealed {
                    if let Some(s) = self.services.get_mut(&r.service_id) {
                        if s.registry_auth.as_ref() == Some(&r.before) {
                            s.registry_auth = Some(r.after.clone());
                            s.version = version;
                        }
                    }
                }
            }
            Command::FinishCaRotation { tokens, .. } => {
                if let Some(rotation) = self.ca_rotation.take() {
                    self.root_ca = Some(rotation.to);
                }
                self.tokens = Some(tokens.clone());
                self.swarm_version = version;
            }
            Command::SetCluster { cluster } => {
                self.cluster = Some(cluster.clone());
                self.swarm_version = version;
            }
            Command::SetGossipKeys { keys } => self.gossip_keys = keys.clone(),
            Command::SetAutolock { unlock_key } => {
                self.unlock_key = unlock_key.clone();
                self.autolock_version = version;
                self.swarm_version = version;
            }
            Command::UpsertObject { kind, id, spec } => match kind {
                ObjectKind::Task => {
                    if let Ok(mut t) = serde_json::from_value::<Task>(spec.clone()) {
                        t.version = version;
                        self.tasks.insert(id.clone(), t);
                    }
                }
                ObjectKind::Secret | ObjectKind::Config => {
                    if let Ok(mut o) = serde_json::from_value::<DataObject>(spec.clone()) {
                        o.version = version;
                        let objects = match kind {
                            ObjectKind::Config => &mut self.configs,
                            _ => &mut self.secrets,
                        };
                        objects.insert(id.clone(), o);
                    }
                }
            },
            Command::RemoveObject { kind, id } => match kind {
                ObjectKind::Task => {
                    self.tasks.remove(id);
                }
                ObjectKind::Secret => {
                    self.secrets.remove(id);
                }
                ObjectKind::Config => {
                    self.configs.remove(id);
                }
            },
        }
    }
}
