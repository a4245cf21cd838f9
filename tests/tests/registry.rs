//! Images from a registry, on a 3-host lab whose hosts have no image (`lab up
//! --no-preload`): a service from the lab registry runs on every node, its tag pinned to
//! the registry's digest and every task on that digest; a tag the registry does not
//! have is rejected with the registry's error (`service ps --no-trunc`); an image in a
//! second registry with htpasswd authentication is refused without
//! `--with-registry-auth` and runs with it (credentials from a docker config file,
//! never stored in the clear).
use std::{fs, net::SocketAddrV4};

use base64::Engine as _;

use shoal_tests::{
    lab::{self, registry::Credentials},
    privileged,
    swarm::{Cli, Task, BOUND},
    wait_for, LabGuard,
};

/// The port of the registry with authentication.
const AUTH_PORT: u16 = 5001;

/// Waits until a task of `service` is rejected; returns its error.
fn rejection(cli: &Cli, service: &str) -> String {
    wait_for(&format!("a rejected {service} task"), BOUND, || {
        let rows = cli.ps(service)?;
        rows.iter()
            .find(|r| r.current == "Rejected")
            .map(|r| r.error.clone())
            .ok_or_else(|| format!("{rows:#?}"))
    })
}

/// The image ID and repo digests of a task's container, as its host's dockerd says.
fn container_image(lab: &LabGuard, t: &Task) -> (String, String) {
    let id = lab.exec_ok(
        &t.node,
        &["docker", "inspect", "-f", "{{.Image}}", &t.container],
    );
    let digests = lab.exec_ok(
        &t.node,
        &[
            "docker",
            "image",
            "inspect",
            "-f",
            "{{json .RepoDigests}}",
            &id,
        ],
    );
    (id, digests)
}

/// The digest the registry at `registry` gives for `repo:tag` (its manifest's).
fn registry_digest(
    lab: &LabGuard,
    registry: &str,
    repo: &str,
    tag: &str,
    creds: Option<&Credentials>,
) -> String {
    let url = format!("http://{registry}/v2/{repo}/manifests/{tag}");
    let user = creds.map(|c| format!("{}:{}", c.user, c.password));
    let mut argv = vec![
        "curl",
        "-sSI",
        "--max-time",
        "10",
        "-H",
        "Accept: application/vnd.docker.distribution.manifest.v2+json",
    ];
    if let Some(u) = &user {
        argv.extend(["-u", u.as_str()]);
    }
    argv.push(&url);
    let out = lab.client(&argv);
    let head = String::from_utf8_lossy(&out.stdout);
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("docker-content-digest")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no digest for {url}: {head}"))
}

/// A service in global mode from `image`, waited for on every host; its tasks.
fn global_service(cli: &Cli, name: &str, image: &str, extra: &[&str]) -> Vec<Task> {
    let mut args = vec![
        "service", "create", "--detach", "--name", name, "--mode", "global",
    ];
    args.extend_from_slice(extra);
    args.push(image);
    cli.ok("h1", &args);
    cli.wait_running(name, 3, |ts| {
        let nodes: std::collections::BTreeSet<&str> = ts.iter().map(|t| t.node.as_str()).collect();
        nodes.len() == 3
    })
}

#[test]
fn services_pull_their_images_from_registries() {
    if !privileged() {
        return;
    }
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let lab = LabGuard::up_with(
        'g',
        lab::UpOptions {
            hosts: 3,
            preload: false,
        },
    );
    let registry = lab.state.registry.clone();
    assert!(!registry.is_empty(), "lab status names no registry");
    for h in &lab.state.hosts {
        let images = lab.exec_ok(&h.name, &["docker", "images", "-q"]);
        assert!(images.is_empty(), "{} has images: {images}", h.name);
    }
    let cli = Cli { lab: &lab };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();

    // A registry image no node has: pulled on each, pinned to one digest.
    let image = format!("{registry}/shoal/web:1");
    let digest = registry_digest(&lab, &registry, "shoal/web", "1", None);
    let tasks = global_service(&cli, "web", &image, &[]);
    let spec_image = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
            "web",
        ],
    );
    assert_eq!(spec_image.trim(), format!("{image}@{digest}"));
    let expected_id = xtask::images::registry_images()
        .expect("lab images")
        .into_iter()
        .find(|i| i.tag == "1")
        .expect("shoal/web:1")
        .id;
    for t in &tasks {
        let (id, digests) = container_image(&lab, t);
        assert_eq!(id, expected_id, "{} runs another image", t.node);
        assert!(
            digests.contains(&format!("{registry}/shoal/web@{digest}")),
            "{}: {digests}",
            t.node
        );
    }

    // A tag the registry does not have: a warning at create (nothing to pin), then
    // every try rejected with the registry's words.
    let out = lab.exec(
        "h1",
        &[
            "shoal",
            "service",
            "create",
            "--detach",
            "--name",
            "nope",
            &format!("{registry}/shoal/web:nope"),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(
        warning.contains("could not be accessed on a registry to record its digest"),
        "{warning}"
    );
    let err = rejection(&cli, "nope");
    assert!(err.contains("manifest unknown"), "{err}");
    assert!(err.contains("shoal/web:nope"), "{err}");
    cli.ok("h1", &["service", "rm", "nope"]);

    // A registry that wants credentials.
    let creds = Credentials {
        user: "shoaltest".into(),
        password: "not in the store".into(),
    };
    let auth = lab::registry::start(
        &lab.layout,
        &lab.state.client.netns,
        lab.state.client.address,
        AUTH_PORT,
        Some(&creds),
    )
    .expect("registry with authentication");
    let private = format!("{}/shoal/web:2", auth.host());
    assert_eq!(
        auth.addr,
        SocketAddrV4::new(lab.state.client.address, AUTH_PORT)
    );

    // Without --with-registry-auth no credentials go anywhere: the pull is refused.
    cli.ok(
        "h1",
        &[
            "service", "create", "--detach", "--name", "noauth", &private,
        ],
    );
    let err = rejection(&cli, "noauth");
    assert!(
        err.contains("no basic auth credentials") || err.contains("unauthorized"),
        "{err}"
    );
    cli.ok("h1", &["service", "rm", "noauth"]);

    // With it, the credentials of the user's docker config file.
    let config_dir = lab.state.hosts[0].run_dir.join("docker-config");
    fs::create_dir_all(&config_dir).unwrap();
    // What `docker login` writes: base64 of user:password.
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", creds.user, creds.password));
    fs::write(
        config_dir.join("config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{basic}"}}}}}}"#,
            auth.host()
        ),
    )
    .unwrap();
    let docker_config = format!("DOCKER_CONFIG={}", config_dir.display());
    let out = lab.exec(
        "h1",
        &[
            "env",
            &docker_config,
            "shoal",
            "service",
            "create",
            "--detach",
            "--name",
            "private",
            "--mode",
            "global",
            "--with-registry-auth",
            &private,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    // The digest was resolved with the credentials: no warning.
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("WARNING"),
        "{out:?}"
    );
    let tasks = cli.wait_running("private", 3, |ts| {
        ts.iter()
            .map(|t| t.node.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            == 3
    });
    let digest2 = registry_digest(&lab, &auth.host(), "shoal/web", "2", Some(&creds));
    for t in &tasks {
        let (_, digests) = container_image(&lab, t);
        assert!(
            digests.contains(&format!("{}/shoal/web@{digest2}", auth.host())),
            "{}: {digests}",
            t.node
        );
    }

    // The managers keep the credentials sealed: the password is nowhere in h1's files
    // (the cluster's Raft log and snapshots, the agent's log and dumps).
    let leaked = files_containing(&lab.state.hosts[0].run_dir, creds.password.as_bytes());
    assert!(
        leaked.is_empty(),
        "the password is stored in the clear in {leaked:?}"
    );
}

/// Files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if kind.is_file()
            && fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        {
            // Regular files only: sockets and the containers' FIFOs are not read.
            found.push(path);
        }
    }
    found
}
