//! `docker run --network NET` through a manager's Engine API socket, with the real
//! `docker` CLI: an overlay created without `--attachable` is refused with Docker's own
//! message (by name and by ID), and nothing is left behind by a refusal; a container on
//! an attachable one runs (`tests/tests/attachable_run.rs` checks what it reaches);
//! `docker network connect` of an existing container to an overlay is refused saying
//! how a container gets on it; a network of the node's own dockerd (a bridge) still runs
//! the container unchanged.
use shoal_tests::{docker_cli::DockerCli, privileged, swarm::Cli, LabGuard};

#[test]
fn docker_run_on_a_swarm_overlay_is_refused_as_docker_refuses_it() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('h', 1);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();
    let docker = DockerCli::on(&guard, 0);

    let plain = docker
        .ok(&["network", "create", "--driver", "overlay", "plain"])
        .trim()
        .to_owned();
    docker.ok(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--attachable",
        "shared",
    ]);
    let before = docker.ok(&["ps", "-aq"]);

    let err = docker.err(&["run", "--rm", "--network", "plain", "shoal/web:1", "true"]);
    assert!(
        err.contains(
            "Could not attach to network plain: rpc error: code = PermissionDenied \
             desc = network plain not manually attachable"
        ),
        "{err}"
    );
    let short = &plain[..12];
    let err = docker.err(&["create", "--network", short, "shoal/web:1"]);
    assert!(
        err.contains(&format!(
            "Could not attach to network {short}: rpc error: code = PermissionDenied \
             desc = network plain not manually attachable"
        )),
        "{err}"
    );
    assert_eq!(
        docker.ok(&["ps", "-aq"]),
        before,
        "a refused create left a container"
    );
    // Attachable: the container runs, on a manager's socket too.
    docker.ok(&["run", "--rm", "--network", "shared", "shoal/web:1", "true"]);
    assert_eq!(docker.ok(&["ps", "-aq"]), before, "--rm left a container");

    // A network of the node's own dockerd: the container runs as dockerd runs it.
    docker.ok(&["network", "create", "--driver", "bridge", "localbr"]);
    let out = docker.ok(&[
        "run",
        "--rm",
        "--network",
        "localbr",
        "--name",
        "onbridge",
        "shoal/web:1",
        "hostname",
    ]);
    assert!(!out.trim().is_empty(), "hostname printed nothing");
    let id = docker
        .ok(&["create", "--name", "idle", "shoal/web:1", "true"])
        .trim()
        .to_owned();
    let err = docker.err(&["network", "connect", "shared", &id]);
    assert!(
        err.contains("does not connect existing containers to overlay network shared"),
        "{err}"
    );
    let err = docker.err(&["network", "connect", "plain", &id]);
    assert!(
        err.contains("network plain not manually attachable"),
        "{err}"
    );
    docker.ok(&["rm", "-f", &id]);
    docker.ok(&["network", "rm", "localbr"]);
    println!("refusals checked: plain by name and by ID prefix, connect; attachable ran");
}
