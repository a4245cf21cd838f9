//! `--privileged` and `--device` on a real 2-host lab (shoal's own service flags:
//! Docker's services have neither, moby#24862). A service made with `--privileged`
//! can add a network device in its task's namespace while a plain one is refused; a
//! `--device /dev/null:/dev/xnull` task has that character device.
//!
//! A privileged container gets every capability the kernel has: on a machine whose
//! capability bounding set lacks one (this project's test machine runs without
//! CAP_SYS_RESOURCE), runc cannot start it, `docker run --privileged` included. The test
//! asks the node's dockerd first; where it cannot run one, the privileged task must
//! fail with runc's own reason (so dockerd was asked for a privileged container), and
//! the update to `--privileged=false` must bring it to running. `service inspect`
//! shows both beside Docker's `Spec` (`ShoalSpec`), never in its `ContainerSpec`, and
//! `docker inspect` on the node shows the task container's `HostConfig.Privileged` and
//! `Devices`. An update through the Engine API by the docker CLI (whose spec has no
//! such fields) keeps them; `service update --privileged=false` rolls the task and the
//! new one is not privileged; a bad `--device-add` is refused and changes nothing. A
//! stack with `privileged: true` and `devices:` does the same, and one with
//! `healthcheck.start_interval` is refused saying why, deploying nothing.
use shoal_tests::{
    docker_cli::DockerCli,
    privileged,
    swarm::{Cli, Task, BOUND},
    wait_for, LabGuard,
};

/// A network device only a task with CAP_NET_ADMIN over its namespace may add (the
/// kernel has bridges built in; it has no dummy module).
const ADD_LINK: &[&str] = &["ip", "link", "add", "shoalp0", "type", "bridge"];

/// What runc says when it cannot give a container every capability it asks for.
const CAPS_REFUSED: &str = "unable to apply caps";

/// `HostConfig.Privileged` and `Devices` of the task's container, as its node's dockerd
/// shows them.
fn host_config(guard: &LabGuard, t: &Task) -> String {
    guard
        .exec_ok(
            &t.node,
            &[
                "docker",
                "inspect",
                "--format",
                "{{.HostConfig.Privileged}} {{json .HostConfig.Devices}}",
                &t.container,
            ],
        )
        .trim()
        // dockerd shows devices it was not given as null.
        .replace(" null", " []")
}

/// The device numbers of `path` in the task (`major,minor` in hex), or the error.
fn device_numbers(cli: &Cli, t: &Task, path: &str) -> Result<String, String> {
    cli.exec_in(t, &["stat", "-c", "%F %t,%T", path])
}

#[test]
fn privileged_and_devices() {
    if !privileged() {
        return;
    }
    let began = std::time::Instant::now();
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('3', 2);
    let cli = Cli { lab: &guard };
    cli.start_agents(&shoal, &[]);
    cli.form_cluster();

    // Can this machine run a privileged container at all? The node's dockerd says.
    let probe = guard.exec(
        "h1",
        &[
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            "--privileged",
            "shoal/web:1",
            "true",
        ],
    );
    let can_run_privileged = probe.status.success();
    if !can_run_privileged {
        let why = String::from_utf8_lossy(&probe.stderr).into_owned();
        assert!(why.contains(CAPS_REFUSED), "docker run --privileged: {why}");
        println!("this machine cannot run privileged containers: {why}");
    }

    for argv in [
        &[
            "--name",
            "priv",
            "--privileged",
            "--device",
            "/dev/null:/dev/xnull",
        ][..],
        &["--name", "dev", "--device", "/dev/null:/dev/xnull"][..],
        &["--name", "plain"][..],
    ] {
        let mut create = vec!["service", "create", "--detach"];
        create.extend_from_slice(argv);
        create.push("shoal/web:1");
        cli.ok("h1", &create);
    }
    let dev = cli.wait_running("dev", 1, |_| true).remove(0);
    let plain = cli.wait_running("plain", 1, |_| true).remove(0);
    let priv_task = if can_run_privileged {
        cli.wait_ps("priv", "the privileged task running", |rows| {
            rows.iter().any(|r| r.running())
        });
        Some(cli.wait_running("priv", 1, |_| true).remove(0))
    } else {
        cli.wait_ps("priv", "the privileged task refused by runc", |rows| {
            rows.iter()
                .any(|r| r.current == "Failed" && r.error.contains(CAPS_REFUSED))
        });
        None
    };
    println!("services made after {:?}", began.elapsed());

    // Only a privileged task may add a network device in its namespace.
    if let Some(task) = &priv_task {
        cli.exec_in(task, ADD_LINK)
            .unwrap_or_else(|e| panic!("the privileged task could not add a link: {e}"));
        assert_eq!(
            host_config(&guard, task),
            r#"true [{"PathOnHost":"/dev/null","PathInContainer":"/dev/xnull","CgroupPermissions":"rwm"}]"#
        );
    }
    for t in [&plain, &dev] {
        let refused = cli
            .exec_in(t, ADD_LINK)
            .expect_err("a plain task added a link");
        assert!(refused.contains("Operation not permitted"), "{refused}");
    }
    // /dev/null (1,3) is the task's /dev/xnull, and the plain task has none.
    assert_eq!(
        device_numbers(&cli, &dev, "/dev/xnull").unwrap(),
        "character special file 1,3"
    );
    cli.exec_in(&dev, &["sh", "-c", "echo gone > /dev/xnull"])
        .expect("writing to /dev/xnull");
    let missing = device_numbers(&cli, &plain, "/dev/xnull").expect_err("plain has /dev/xnull");
    assert!(missing.contains("No such file"), "{missing}");
    assert_eq!(
        host_config(&guard, &dev),
        r#"false [{"PathOnHost":"/dev/null","PathInContainer":"/dev/xnull","CgroupPermissions":"rwm"}]"#
    );
    assert_eq!(host_config(&guard, &plain), "false []");

    // service inspect: beside Docker's Spec, not in its ContainerSpec.
    let shoal_spec = |service: &str| -> serde_json::Value {
        let shown = cli.ok("h1", &["service", "inspect", service]);
        let shown: serde_json::Value = serde_json::from_str(&shown).expect("service inspect");
        shown[0].get("ShoalSpec").cloned().unwrap_or_default()
    };
    let shown = shoal_spec("priv");
    assert_eq!(shown["Privileged"], true, "{shown}");
    assert_eq!(
        shown["Devices"][0]["PathInContainer"], "/dev/xnull",
        "{shown}"
    );
    assert_eq!(shoal_spec("dev")["Privileged"], false);
    assert!(shoal_spec("plain").is_null(), "{}", shoal_spec("plain"));
    let container = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.ContainerSpec}}",
            "priv",
        ],
    );
    assert!(
        !container.contains("Privileged") && !container.contains("Devices"),
        "{container}"
    );
    let pretty = cli.ok("h1", &["service", "inspect", "--pretty", "priv"]);
    assert!(
        pretty.contains("Privileged:") && pretty.contains("/dev/null:/dev/xnull:rwm"),
        "{pretty}"
    );

    // The docker CLI's update through the Engine API: its spec cannot say either, and
    // the services keep both.
    let docker = DockerCli::on(&guard, 0);
    for service in ["dev", "priv"] {
        docker.ok(&[
            "service",
            "update",
            "--detach",
            "--no-resolve-image",
            "--env-add",
            "FROM_DOCKER=1",
            service,
        ]);
    }
    let dev = cli.wait_running("dev", 1, |t| t[0].id != dev.id).remove(0);
    let env = cli
        .exec_in(&dev, &["sh", "-c", "echo $FROM_DOCKER"])
        .unwrap();
    assert_eq!(env, "1", "the Engine API's update was not carried out");
    assert_eq!(
        device_numbers(&cli, &dev, "/dev/xnull").unwrap(),
        "character special file 1,3",
        "the Engine API's update dropped the device"
    );
    let shown = shoal_spec("priv");
    assert_eq!(shown["Privileged"], true, "{shown}");
    let env = cli.ok(
        "h1",
        &[
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.ContainerSpec.Env}}",
            "priv",
        ],
    );
    assert!(env.contains("FROM_DOCKER=1"), "{env}");
    let priv_task = match priv_task {
        Some(old) => {
            let task = cli.wait_running("priv", 1, |t| t[0].id != old.id).remove(0);
            cli.exec_in(&task, ADD_LINK)
                .expect("privileged after the Engine API's update");
            Some(task)
        }
        None => None,
    };
    println!(
        "docker service update through the Engine API kept --privileged and --device: {:?}",
        began.elapsed()
    );

    // Bad input: refused, nothing changes.
    let version = || {
        cli.ok(
            "h1",
            &[
                "service",
                "inspect",
                "--format",
                "{{.Version.Index}}",
                "priv",
            ],
        )
    };
    let before = version();
    for (bad, says) in [
        (&["--device-add", "dev/null"][..], "not an absolute path"),
        (&["--device-add", "/dev/null:/dev/y:rwx"][..], "r, w and m"),
        (&["--device-add", "/dev/null::r"][..], "empty part"),
    ] {
        let mut argv = vec!["service", "update", "--detach"];
        argv.extend_from_slice(bad);
        argv.push("priv");
        let err = cli.err("h1", &argv);
        assert!(
            err.contains("invalid --device") && err.contains(says),
            "{err}"
        );
    }
    assert_eq!(version(), before, "a refused update changed the service");

    // --privileged=false: a rolling update; the new task is not privileged (and runs
    // where a privileged one could not), and keeps its device.
    let rolled = std::time::Instant::now();
    cli.ok(
        "h1",
        &[
            "service",
            "update",
            "--detach",
            "--privileged=false",
            "priv",
        ],
    );
    let task = cli
        .wait_running("priv", 1, |t| {
            priv_task.as_ref().is_none_or(|o| t[0].id != o.id)
        })
        .remove(0);
    println!(
        "--privileged=false: the new task running after {:?}",
        rolled.elapsed()
    );
    let refused = cli
        .exec_in(&task, ADD_LINK)
        .expect_err("the task is still privileged");
    assert!(refused.contains("Operation not permitted"), "{refused}");
    assert!(
        host_config(&guard, &task).starts_with("false [{"),
        "{}",
        host_config(&guard, &task)
    );
    assert_eq!(
        device_numbers(&cli, &task, "/dev/xnull").unwrap(),
        "character special file 1,3"
    );
    assert_eq!(shoal_spec("priv")["Privileged"], false);
    // --device-rm: another rolling update, and the device is gone.
    cli.ok(
        "h1",
        &[
            "service",
            "update",
            "--detach",
            "--device-rm",
            "/dev/xnull",
            "priv",
        ],
    );
    let task = cli
        .wait_running("priv", 1, |t| t[0].id != task.id)
        .remove(0);
    assert_eq!(host_config(&guard, &task), "false []");
    assert!(
        shoal_spec("priv").is_null(),
        "nothing of shoal's own is left: {}",
        shoal_spec("priv")
    );

    // A stack: compose's privileged and devices.
    let dir = std::env::temp_dir().join(format!("{}-stack", guard.state.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("stack.yml");
    let f = file.to_str().unwrap();
    std::fs::write(
        &file,
        concat!(
            "services:\n",
            "  admin:\n",
            "    image: shoal/web:1\n",
            "    privileged: true\n",
            "    devices:\n",
            "      - \"/dev/zero:/dev/xzero:rw\"\n",
            "  disk:\n",
            "    image: shoal/web:1\n",
            "    devices: [\"/dev/zero:/dev/xzero:rw\"]\n",
        ),
    )
    .unwrap();
    cli.ok("h1", &["stack", "deploy", "-c", f, "app"]);
    let disk = cli.wait_running("app_disk", 1, |_| true).remove(0);
    assert_eq!(
        device_numbers(&cli, &disk, "/dev/xzero").unwrap(),
        "character special file 1,5"
    );
    assert_eq!(
        host_config(&guard, &disk),
        r#"false [{"PathOnHost":"/dev/zero","PathInContainer":"/dev/xzero","CgroupPermissions":"rw"}]"#
    );
    let shown = shoal_spec("app_admin");
    assert_eq!(shown["Privileged"], true, "{shown}");
    assert_eq!(shown["Devices"][0]["CgroupPermissions"], "rw", "{shown}");
    let admin = if can_run_privileged {
        let admin = cli.wait_running("app_admin", 1, |_| true).remove(0);
        cli.exec_in(&admin, ADD_LINK)
            .expect("the stack's privileged task adds a link");
        assert_eq!(
            device_numbers(&cli, &admin, "/dev/xzero").unwrap(),
            "character special file 1,5"
        );
        Some(admin)
    } else {
        cli.wait_ps(
            "app_admin",
            "the stack's privileged task refused by runc",
            |rows| {
                rows.iter()
                    .any(|r| r.current == "Failed" && r.error.contains(CAPS_REFUSED))
            },
        );
        None
    };
    // The same file without them: a re-deploy rolls the task to a plain one.
    std::fs::write(
        &file,
        concat!(
            "services:\n",
            "  admin:\n",
            "    image: shoal/web:1\n",
            "  disk:\n",
            "    image: shoal/web:1\n",
            "    devices: [\"/dev/zero:/dev/xzero:rw\"]\n",
        ),
    )
    .unwrap();
    let out = cli.ok("h1", &["stack", "deploy", "-c", f, "app"]);
    assert!(
        out.contains("Updating service app_admin") && !out.contains("Updating service app_disk"),
        "{out}"
    );
    let admin = cli
        .wait_running("app_admin", 1, |t| {
            admin.as_ref().is_none_or(|o| t[0].id != o.id)
        })
        .remove(0);
    assert_eq!(host_config(&guard, &admin), "false []");
    assert!(shoal_spec("app_admin").is_null());

    // healthcheck.start_interval: refused saying why, nothing deployed.
    std::fs::write(
        &file,
        concat!(
            "services:\n",
            "  admin:\n",
            "    image: shoal/web:1\n",
            "  checked:\n",
            "    image: shoal/web:1\n",
            "    healthcheck: {test: \"true\", interval: 5s, start_interval: 1s}\n",
        ),
    )
    .unwrap();
    let err = cli.err("h1", &["stack", "deploy", "-c", f, "app"]);
    assert!(
        err.contains("healthcheck.start_interval") && err.contains("API 1.44"),
        "{err}"
    );
    let services = cli.ok("h1", &["service", "ls", "--format", "{{.Name}}"]);
    assert!(!services.contains("app_checked"), "{services}");
    wait_for("the lab's services settled", BOUND, || {
        let ls = cli.run("h1", &["service", "ls"])?;
        if ls.matches("1/1").count() == 5 {
            Ok(())
        } else {
            Err(ls)
        }
    });
    std::fs::remove_dir_all(&dir).ok();
    println!("privileged and devices lab done in {:?}", began.elapsed());
}
