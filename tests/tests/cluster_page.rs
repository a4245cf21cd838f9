//! The live cluster page on a real 3-host lab: every agent runs with `--web-addr` on its
//! lab address; h1 (the manager) serves the page, the workers answer 503. A headless
//! Chromium in the lab client's namespace loads the page from h1, the test scales a
//! service, and the page's DOM shows every new task in the column of the node `service
//! ps` places it on within 2 s of the scale request (server-sent events, no reload);
//! then, once they run, a screenshot is saved under `<target>/test-artefacts/`.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde_json::Value;
use shoal_tests::{
    browser::Browser,
    privileged,
    swarm::{Cli, BOUND},
    wait_for, LabGuard,
};

const WEB_PORT: u16 = 8090;
/// How soon the page must show tasks the store holds (the issue's figure).
const SHOWN_WITHIN: Duration = Duration::from_secs(2);

/// The page's picture: task ID -> (column's hostname, service, state), for tasks meant
/// to run (a card struck through is one being stopped).
const PICTURE: &str = r#"JSON.stringify([...document.querySelectorAll('.node')].flatMap(n =>
  [...n.querySelectorAll('.task:not(.leaving)')].map(t =>
    [t.dataset.taskId, n.dataset.hostname, t.dataset.service, t.dataset.state])))"#;

type Picture = BTreeMap<String, (String, String, String)>;

fn picture(browser: &mut Browser) -> Result<Picture, String> {
    let v = browser.eval(PICTURE)?;
    let rows: Vec<(String, String, String, String)> =
        serde_json::from_str(v.as_str().ok_or(format!("not a string: {v}"))?)
            .map_err(|e| e.to_string())?;
    Ok(rows
        .into_iter()
        .map(|(id, host, service, state)| (id, (host, service, state)))
        .collect())
}

/// `service ps`'s current tasks of `service`: task ID -> node.
fn placed(cli: &Cli, service: &str) -> Result<BTreeMap<String, String>, String> {
    Ok(cli
        .ps(service)?
        .into_iter()
        .filter(|r| !r.history && r.desired == "Running")
        .map(|r| (r.id, r.node))
        .collect())
}

/// The page's `web` tasks and their columns agree with `service ps`'s `n` tasks.
fn agrees(page: &Picture, ps: &BTreeMap<String, String>, n: usize) -> Result<(), String> {
    let shown: BTreeMap<String, String> = page
        .iter()
        .filter(|(_, (_, s, _))| s == "web")
        .map(|(id, (host, _, _))| (id.clone(), host.clone()))
        .collect();
    if ps.len() == n && &shown == ps {
        Ok(())
    } else {
        Err(format!("page {shown:?} vs service ps {ps:?}"))
    }
}

fn curl_status(lab: &LabGuard, args: &[&str]) -> (String, String) {
    let mut argv = vec!["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}"];
    argv.extend_from_slice(args);
    let out = lab.client(&argv);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (body.to_owned(), code.to_owned())
}

#[test]
fn the_cluster_page_shows_scaled_tasks_on_their_nodes_live() {
    if !privileged() {
        return;
    }
    let began = Instant::now();
    let shoal = xtask::util::shoal_binary().expect("shoal binary (cargo build)");
    let guard = LabGuard::up('b', 3);
    let cli = Cli { lab: &guard };
    for (i, h) in guard.state.hosts.iter().enumerate() {
        cli.start_agent(&shoal, i, &[format!("--web-addr={}:{WEB_PORT}", h.address)]);
    }
    cli.form_cluster();
    let h1 = guard.state.hosts[0].address;
    let h2 = guard.state.hosts[1].address;
    let page = format!("http://{h1}:{WEB_PORT}/");

    // The endpoint: the page and its data on the manager, read-only, 503 on a worker.
    let (body, code) = curl_status(&guard, &[&page]);
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("<title>shoal cluster</title>"), "{body}");
    let (body, code) = curl_status(&guard, &[&format!("{page}api/cluster")]);
    assert_eq!(code, "200", "{body}");
    let doc: Value = serde_json::from_str(&body).expect("the cluster document");
    assert_eq!(doc["nodes"].as_array().map(Vec::len), Some(3), "{doc}");
    let (_, code) = curl_status(&guard, &["-X", "POST", &format!("{page}api/cluster")]);
    assert_eq!(code, "405");
    let (_, code) = curl_status(&guard, &[&format!("{page}nothing-here")]);
    assert_eq!(code, "404");
    let (body, code) = curl_status(&guard, &[&format!("http://{h2}:{WEB_PORT}/api/cluster")]);
    assert_eq!(code, "503", "{body}");
    assert!(body.contains("not a swarm manager"), "{body}");

    cli.ok(
        "h1",
        &["network", "create", "--subnet", "10.0.31.0/24", "app"],
    );
    cli.ok(
        "h1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "2",
            "--network",
            "app",
            "-p",
            "8080:80",
            "shoal/web:1",
        ],
    );
    cli.wait_running("web", 2, |_| true);

    let mut browser = Browser::open(&guard, &page);
    wait_for("the page shows web's 2 running tasks", BOUND, || {
        let page = picture(&mut browser)?;
        agrees(&page, &placed(&cli, "web")?, 2)?;
        if page.values().all(|(_, _, state)| state == "running") {
            Ok(())
        } else {
            Err(format!("{page:?}"))
        }
    });

    // Scale while the page is open: the new tasks appear on their nodes, live.
    let asked = Instant::now();
    cli.ok("h1", &["service", "scale", "--detach", "web=5"]);
    let mut last = String::new();
    let shown_after = loop {
        let seen = picture(&mut browser).and_then(|page| {
            let ps = placed(&cli, "web")?;
            agrees(&page, &ps, 5)
        });
        match seen {
            Ok(()) => break asked.elapsed(),
            Err(e) if asked.elapsed() > BOUND => panic!("the page never showed 5 tasks: {e}"),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "FIGURE cluster_page new_tasks_shown_after {} ms (last difference before: {last})",
        shown_after.as_millis()
    );
    assert!(
        shown_after <= SHOWN_WITHIN,
        "the page showed the scaled tasks after {shown_after:?}, over {SHOWN_WITHIN:?}"
    );

    cli.wait_running("web", 5, |_| true);
    wait_for(
        "the page shows 5 running tasks where service ps does",
        BOUND,
        || {
            let page = picture(&mut browser)?;
            agrees(&page, &placed(&cli, "web")?, 5)?;
            let states: Vec<&String> = page.values().map(|(_, _, s)| s).collect();
            if states.iter().all(|s| *s == "running") {
                Ok(())
            } else {
                Err(format!("{page:?}"))
            }
        },
    );
    // The rest of the page: the service's row, the mesh's port, the change log.
    let services = browser
        .eval("document.querySelector('#services tr[data-service=\"web\"]').textContent")
        .expect("services table");
    assert!(
        services.as_str().unwrap_or("").contains("5/5"),
        "{services}"
    );
    let mesh = browser
        .eval("document.querySelector('#mesh tr[data-port=\"8080/tcp\"]').textContent")
        .expect("mesh table");
    for h in &guard.state.hosts {
        assert!(
            mesh.as_str()
                .unwrap_or("")
                .contains(&format!("{}:8080", h.address)),
            "{mesh}"
        );
    }
    let changes = browser
        .eval("document.getElementById('changes').children.length")
        .expect("change log");
    assert!(changes.as_u64().unwrap_or(0) >= 3, "{changes}");

    // Traffic: requests to h2's published port show as h2's rate (the heartbeats carry
    // each node's counters to the leader, which sends the rates to the managers).
    let h2_rate = "Number(document.querySelector('.node[data-hostname=\"h2\"] .traffic').dataset.meshFlows || 0)";
    let stop = std::sync::atomic::AtomicBool::new(false);
    let url = format!("http://{h2}:8080/");
    let (sent, seen) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = guard.client(&["curl", "-s", "-o", "/dev/null", "--max-time", "5", &url]);
                sent += u64::from(out.status.success());
            }
            sent
        });
        let seen = wait_for("h2's mesh rate on the page", BOUND, || {
            let rate = browser.eval(h2_rate)?.as_f64().unwrap_or(0.0);
            if rate > 0.0 {
                Ok(rate)
            } else {
                Err(format!("{rate}"))
            }
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (load.join().expect("load thread"), seen)
    });
    println!("FIGURE cluster_page h2_mesh_rate_shown {seen:.1} conn/s ({sent} requests sent)");
    assert!(sent > 0);

    let shot = xtask::util::target_dir().join("test-artefacts/cluster-page.png");
    browser.screenshot(&shot).expect("screenshot");
    let png = std::fs::read(&shot).expect("read screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    println!(
        "FIGURE cluster_page screenshot {} ({} bytes); test took {:.1} s",
        shot.display(),
        png.len(),
        began.elapsed().as_secs_f64()
    );
}
