//! The flags of `shoal service ...` parsed: ports, replica counts, durations, and
//! `service create`'s flags into the [`ServiceSpec`] sent to the managers (the flags it
//! shares with `service update` are read by `policy`).

use shoal_cluster::store::{
    EndpointMode, Placement, PortBalance, PortConfig, Protocol, PublishMode, RestartCondition,
    ServiceMode, ServiceSpec, UpdateConfig, DEFAULT_RESTART_DELAY_MS, DEFAULT_STOP_GRACE_MS,
};

use super::{
    file_flags::{parse_file_references, FileKind},
    policy::parse_duration_flag,
    CreateArgs, EndpointModeArg, ModeArg,
};

/// A replica count: a non-negative integer.
pub fn parse_replicas(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<u64>()
        .map_err(|_| format!("invalid replicas value {text:?}: must be a non-negative integer"))
}

/// Docker's durations: `300ms`, `2s`, `1m30s`, `1h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || format!("invalid duration {text:?}: use e.g. 500ms, 2s, 1m30s");
    let t = text.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(secs * 1000);
    }
    let mut total = 0u64;
    let mut num = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphabetic() {
                unit.push(n);
                chars.next();
            } else {
                break;
            }
        }
        let value: f64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let factor = match unit.as_str() {
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return Err(bad()),
        };
        total += (value * factor) as u64;
    }
    if !num.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

fn parse_protocol(text: &str, spec: &str) -> Result<Protocol, String> {
    match text {
        "tcp" | "" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        other => Err(format!(
            "invalid publish spec {spec:?}: protocol {other:?} is not tcp or udp"
        )),
    }
}

fn parse_port(text: &str, spec: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid publish spec {spec:?}: {text:?} is not a port (1-65535)"))
}

/// `-p`: `PUB:TGT[/proto]`, `TGT[/proto]` (published chosen by the managers), or the
/// long form `mode=ingress|host,target=N,published=N,protocol=tcp|udp,lb=maglev|roundrobin`
/// (`lb`: how the routing mesh balances the port; Maglev unless said).
pub fn parse_publish(spec: &str) -> Result<PortConfig, String> {
    if spec.contains('=') {
        let mut port = PortConfig {
            protocol: Protocol::Tcp,
            target: 0,
            published: 0,
            mode: PublishMode::Ingress,
            balance: None,
        };
        for field in spec.split(',') {
            let (k, v) = field
                .split_once('=')
                .ok_or_else(|| format!("invalid publish spec {spec:?}: {field:?} is not K=V"))?;
            match k.trim() {
                "mode" => {
                    port.mode = match v {
                        "ingress" => PublishMode::Ingress,
                        "host" => PublishMode::Host,
                        other => {
                            return Err(format!(
                            "invalid publish spec {spec:?}: mode {other:?} is not ingress or host"
                        ))
                        }
                    }
                }
                "target" => port.target = parse_port(v, spec)?,
                "published" => port.published = parse_port(v, spec)?,
                "protocol" => port.protocol = parse_protocol(v, spec)?,
                "lb" => {
                    port.balance = Some(
                        PortBalance::parse(v)
                            .map_err(|e| format!("invalid publish spec {spec:?}: {e}"))?,
                    )
                }
                other => {
                    return Err(format!(
                        "invalid publish spec {spec:?}: unknown field {other:?}"
                    ))
                }
            }
        }
        if port.target == 0 {
            return Err(format!("invalid publish spec {spec:?}: target is required"));
        }
        return Ok(port);
    }
    let (ports, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let protocol = parse_protocol(proto, spec)?;
    let (published, target) = match ports.split_once(':') {
        Some((p, t)) => (parse_port(p, spec)?, parse_port(t, spec)?),
        None => (0, parse_port(ports, spec)?),
    };
    Ok(PortConfig {
        protocol,
        target,
        published,
        mode: PublishMode::Ingress,
        balance: None,
    })
}

impl CreateArgs {
    /// The spec the CLI sends (networks as given; the manager resolves them).
    pub fn spec(&self) -> Result<ServiceSpec, String> {
        let mode = self.mode()?;
        let ports = self
            .publish
            .iter()
            .map(|p| parse_publish(p))
            .collect::<Result<Vec<_>, _>>()?;
        let healthcheck = self.health.changes()?.apply(None)?;
        let env = self.environment()?;
        check_env(&env)?;
        let (networks, network_aliases) = self.networks()?;
        let container = self.container_options()?;
        check_constraints(&self.constraints)?;
        let max_replicas_per_node = self.replicas_max_per_node.unwrap_or(0);
        if max_replicas_per_node > 0 && mode.is_global() {
            return Err("replicas-max-per-node can only be used with replicated mode".into());
        }
        let mut spec = ServiceSpec {
            placement: Placement {
                max_replicas_per_node,
                preferences: parse_placement_prefs(&self.placement_prefs)?,
            },
            name: self.name.clone().unwrap_or_else(|| {
                format!("svc-{}", &shoal_orchestrator::scheduler::new_id()[..8])
            }),
            labels: self.labels.iter().cloned().collect(),
            image: self.image.clone(),
            args: self.args.clone(),
            env,
            mode,
            networks,
            ports,
            endpoint_mode: self.endpoint_mode.into(),
            constraints: self.constraints.clone(),
            healthcheck,
            restart_condition: RestartCondition::Any,
            restart_delay_ms: DEFAULT_RESTART_DELAY_MS,
            restart_max_attempts: 0,
            restart_window_ms: 0,
            stop_grace_ms: DEFAULT_STOP_GRACE_MS,
            container,
            network_aliases,
            update_config: UpdateConfig::default(),
            secrets: parse_file_references(FileKind::Secret, &self.secrets)?,
            configs: parse_file_references(FileKind::Config, &self.configs)?,
            rollback_config: UpdateConfig::rollback_default(),
        };
        self.restart.changes()?.apply(&mut spec);
        if let Some(grace) = &self.stop_grace_period {
            spec.stop_grace_ms = parse_duration_flag("--stop-grace-period", grace)?;
        }
        let update = self.update_policy.changes()?;
        let rollback = self.rollback_policy.changes()?;
        if mode.is_job() && (update != Default::default() || rollback != Default::default()) {
            return Err("update and rollback configuration is not supported for jobs".into());
        }
        update.apply(&mut spec.update_config, "update")?;
        rollback.apply(&mut spec.rollback_config, "rollback")?;
        Ok(spec)
    }

    /// `--mode` with `--replicas` and `--max-concurrent`, checked as Docker checks them.
    /// A replicated job's defaults are Swarm's: one task at a time, as many
    /// completions as tasks at once.
    fn mode(&self) -> Result<ServiceMode, String> {
        let replicas = self.replicas.as_deref().map(parse_replicas).transpose()?;
        let max_concurrent = self
            .max_concurrent
            .as_deref()
            .map(|n| {
                n.trim().parse::<u64>().map_err(|_| {
                    format!("invalid --max-concurrent value {n:?}: must be a non-negative integer")
                })
            })
            .transpose()?;
        if max_concurrent.is_some() && self.mode != ModeArg::ReplicatedJob {
            return Err("--max-concurrent can only be used with replicated-job mode".into());
        }
        Ok(match self.mode {
            ModeArg::Global | ModeArg::GlobalJob if replicas.is_some() => {
                return Err(
                    "--replicas can only be used with replicated or replicated-job mode".into(),
                )
            }
            ModeArg::Global => ServiceMode::Global,
            ModeArg::GlobalJob => ServiceMode::GlobalJob,
            ModeArg::Replicated => ServiceMode::Replicated {
                replicas: replicas.unwrap_or(1),
            },
            ModeArg::ReplicatedJob => {
                let max_concurrent = max_concurrent.or(replicas).unwrap_or(1);
                ServiceMode::ReplicatedJob {
                    max_concurrent,
                    total_completions: replicas.unwrap_or(max_concurrent),
                }
            }
        })
    }
}

/// `-e`/`--env-add` entries: `K=V` (or `K`), with a name.
pub(super) fn check_env(env: &[String]) -> Result<(), String> {
    for e in env {
        if e.is_empty() || e.starts_with('=') {
            return Err(format!("invalid environment variable {e:?}: expected K=V"));
        }
    }
    Ok(())
}

/// `--placement-pref`/`--placement-pref-add|rm` values, `spread=node.labels.KEY`: the
/// descriptors (Swarm knows only the spread strategy).
pub(super) fn parse_placement_prefs(prefs: &[String]) -> Result<Vec<String>, String> {
    prefs
        .iter()
        .map(|p| {
            let (strategy, descriptor) = p.split_once('=').ok_or_else(|| {
                format!("invalid placement preference {p:?}: expected spread=node.labels.KEY")
            })?;
            if !strategy.eq_ignore_ascii_case("spread") {
                return Err(format!(
                    "invalid placement preference {p:?}: unknown strategy {strategy:?} (spread is the only one)"
                ));
            }
            Placement::spread_label(descriptor)?;
            Ok(descriptor.to_string())
        })
        .collect()
}

/// `--constraint`/`--constraint-add` expressions, checked as the scheduler reads them.
pub(super) fn check_constraints(constraints: &[String]) -> Result<(), String> {
    for c in constraints {
        shoal_orchestrator::scheduler::Constraint::parse(c)?;
    }
    Ok(())
}

impl From<EndpointModeArg> for EndpointMode {
    fn from(a: EndpointModeArg) -> Self {
        match a {
            EndpointModeArg::Vip => EndpointMode::Vip,
            EndpointModeArg::Dnsrr => EndpointMode::Dnsrr,
        }
    }
}

pub(super) fn parse_scale(text: &str) -> Result<(String, u64), String> {
    let (name, n) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid scale specifier {text:?}: expected SERVICE=REPLICAS"))?;
    if name.is_empty() {
        return Err(format!("invalid scale specifier {text:?}: no service"));
    }
    Ok((name.to_string(), parse_replicas(n)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_specs_short_and_long() {
        let p = parse_publish("8080:80").unwrap();
        assert_eq!(
            (p.published, p.target, p.protocol),
            (8080, 80, Protocol::Tcp)
        );
        let p = parse_publish("53:53/udp").unwrap();
        assert_eq!(p.protocol, Protocol::Udp);
        let p = parse_publish("80").unwrap();
        assert_eq!((p.published, p.target), (0, 80));
        let p = parse_publish("mode=host,target=80,published=8081,protocol=tcp").unwrap();
        assert_eq!((p.mode, p.published), (PublishMode::Host, 8081));
        assert_eq!((p.balance, p.balance()), (None, PortBalance::Maglev));
        let p = parse_publish("published=80,target=80,lb=roundrobin").unwrap();
        assert_eq!(p.balance, Some(PortBalance::Roundrobin));
        let p = parse_publish("published=80,target=80,lb=maglev").unwrap();
        assert_eq!(p.balance, Some(PortBalance::Maglev));
        assert_eq!(
            parse_publish("published=80,target=80,lb=leastconn").unwrap_err(),
            "invalid publish spec \"published=80,target=80,lb=leastconn\": load balancing \"leastconn\" is not roundrobin or maglev"
        );
        for bad in [
            "8080:80/sctp",
            "x:80",
            "0:80",
            "70000:80",
            "mode=weird,target=80",
            "published=80",
            "target=80,colour=red",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replicas_and_durations() {
        assert_eq!(parse_replicas("4"), Ok(4));
        assert!(parse_replicas("-1").unwrap_err().contains("non-negative"));
        assert!(parse_replicas("two").is_err());
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("2s"), Ok(2000));
        assert_eq!(parse_duration("1m30s"), Ok(90_000));
        assert_eq!(parse_duration("3"), Ok(3000));
        assert!(parse_duration("soon").is_err());
        assert!(parse_scale("web=x").is_err());
        assert!(parse_scale("=3").is_err());
        assert_eq!(parse_scale("web=3"), Ok(("web".into(), 3)));
    }

    /// `service create ARGS... shoal/web:1 true` parsed and turned into a spec.
    fn create(args: &[&str]) -> Result<ServiceSpec, String> {
        use clap::Parser;
        #[derive(Parser)]
        struct Create {
            #[command(flatten)]
            args: CreateArgs,
        }
        let argv = ["create"]
            .iter()
            .chain(args)
            .chain(&["shoal/web:1", "true"]);
        Create::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .args
            .spec()
    }

    #[test]
    fn job_modes_take_dockers_flags_and_defaults() {
        let mode = |args: &[&str]| create(args).map(|s| s.mode);
        let job = |max_concurrent, total_completions| ServiceMode::ReplicatedJob {
            max_concurrent,
            total_completions,
        };
        assert_eq!(mode(&["--mode", "replicated-job"]), Ok(job(1, 1)));
        assert_eq!(
            mode(&["--mode", "replicated-job", "--replicas", "5"]),
            Ok(job(5, 5))
        );
        assert_eq!(
            mode(&[
                "--mode",
                "replicated-job",
                "--replicas",
                "4",
                "--max-concurrent",
                "2"
            ]),
            Ok(job(2, 4))
        );
        assert_eq!(
            mode(&["--mode", "replicated-job", "--max-concurrent", "3"]),
            Ok(job(3, 3))
        );
        assert_eq!(mode(&["--mode", "global-job"]), Ok(ServiceMode::GlobalJob));
        // Swarm's default restart condition stays: for a job, `any` is `on-failure`.
        let spec = create(&["--mode", "global-job"]).unwrap();
        assert_eq!(spec.restart_condition, RestartCondition::Any);
    }

    #[test]
    fn job_flags_out_of_place_are_refused_with_one_line() {
        for (args, err) in [
            (
                &["--max-concurrent", "2"][..],
                "--max-concurrent can only be used with replicated-job mode",
            ),
            (
                &["--mode", "global", "--max-concurrent", "2"],
                "--max-concurrent can only be used with replicated-job mode",
            ),
            (
                &["--mode", "global-job", "--max-concurrent", "2"],
                "--max-concurrent can only be used with replicated-job mode",
            ),
            (
                &["--mode", "global-job", "--replicas", "2"],
                "--replicas can only be used with replicated or replicated-job mode",
            ),
            (
                &["--mode", "replicated-job", "--replicas", "-1"],
                "invalid replicas value \"-1\": must be a non-negative integer",
            ),
            (
                &["--mode", "replicated-job", "--max-concurrent", "-2"],
                "invalid --max-concurrent value \"-2\": must be a non-negative integer",
            ),
            (
                &["--mode", "replicated-job", "--update-parallelism", "2"],
                "update and rollback configuration is not supported for jobs",
            ),
            (
                &["--mode", "global-job", "--rollback-order", "start-first"],
                "update and rollback configuration is not supported for jobs",
            ),
        ] {
            let got = create(args).unwrap_err();
            assert_eq!(got, err, "{args:?}");
            assert!(!got.contains('\n'), "one line: {got}");
        }
        assert!(create(&["--mode", "batch"]).is_err(), "an unknown mode");
    }
}
