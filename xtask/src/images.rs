//! The lab's local Docker images, built without a running dockerd.
//!
//! Every image is written as a `docker save`-format tarball (`manifest.json`,
//! `<config>.json`, `<layer>/layer.tar`, `repositories`) that `docker load` accepts.
//! The bytes are deterministic: fixed timestamps, owners and entry order, so every build
//! on every host (with the same busybox-static package) yields the same image ID, and a
//! lab's daemons all run one image.
//!
//! Images:
//! - `shoal/web:1`: busybox httpd on port 80 whose `/` is a CGI script answering
//!   `host=<hostname> client=<client ip>`, and on port 8080 a keep-alive HTTP/1.1 server
//!   (busybox `nc -ll`, a shell script per connection) answering every request on a
//!   connection with `host=<hostname> keepalive`: busybox httpd closes after each answer,
//!   and the lab must also prove that long-lived connections survive updates.
//! - `shoal/web:2`: the same, answering `host=... client=... version=2` (and
//!   `host=... keepalive version=2`).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Where the image tarballs live unless `SHOAL_IMAGE_DIR` says otherwise.
pub const DEFAULT_IMAGE_DIR: &str = "/var/lib/shoal-lab/images";
/// The static busybox that goes into the images (Debian's busybox-static).
pub const BUSYBOX: &str = "/bin/busybox";

/// Timestamp of every image and every file in them (2024-01-01T00:00:00Z).
const CREATED: &str = "2024-01-01T00:00:00Z";
const MTIME: u64 = 1_704_067_200;

/// One image tarball on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabImage {
    /// `repo:tag`, e.g. `shoal/web:1`.
    pub tag: &'static str,
    /// The `docker save`-format tarball.
    pub path: PathBuf,
    /// `sha256:<hex>` of the image config, what `docker image inspect -f '{{.Id}}'` reports.
    pub id: String,
}

/// What one image is made of.
struct Spec {
    repo: &'static str,
    tag: &'static str,
    /// `repo:tag`.
    full: &'static str,
    /// Appended to the CGI's answer line (e.g. ` version=2`).
    suffix: &'static str,
}

const SPECS: [Spec; 2] = [
    Spec {
        repo: "shoal/web",
        tag: "1",
        full: "shoal/web:1",
        suffix: "",
    },
    Spec {
        repo: "shoal/web",
        tag: "2",
        full: "shoal/web:2",
        suffix: " version=2",
    },
];

impl Spec {
    fn file_name(&self) -> String {
        format!("{}.tar", self.full.replace(['/', ':'], "-"))
    }
}

/// The host files an image's rootfs is made from.
struct Rootfs {
    busybox: Vec<u8>,
    /// Applet names, sorted, without `busybox` itself.
    applets: Vec<String>,
}

impl Rootfs {
    fn from_host() -> Result<Rootfs> {
        let busybox = fs::read(BUSYBOX)
            .with_context(|| format!("reading {BUSYBOX} (install busybox-static)"))?;
        let out = Command::new(BUSYBOX)
            .arg("--list")
            .output()
            .with_context(|| format!("running {BUSYBOX} --list"))?;
        if !out.status.success() {
            bail!("{BUSYBOX} --list failed: {}", out.status);
        }
        let list = String::from_utf8(out.stdout).context("busybox --list output")?;
        Ok(Rootfs {
            busybox,
            applets: applet_names(&list),
        })
    }
}

/// Applet names from `busybox --list`: sorted, deduplicated, without `busybox` and
/// anything that is not a plain file name.
fn applet_names(list: &str) -> Vec<String> {
    let mut names: Vec<String> = list
        .lines()
        .map(str::trim)
        .filter(|n| !n.is_empty() && *n != "busybox" && !n.contains('/') && *n != "." && *n != "..")
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// An image built in memory.
struct Built {
    /// The `docker save` tarball.
    bytes: Vec<u8>,
    id: String,
    /// The image config (its SHA-256 is the image ID).
    config: Vec<u8>,
    /// The single layer, an uncompressed tar.
    layer: Vec<u8>,
}

/// The CGI script that answers every request for `/`.
pub(crate) fn cgi_script(suffix: &str) -> String {
    format!(
        "#!/bin/sh\n\
         # busybox httpd on an IPv6 socket sets REMOTE_ADDR=[::ffff:a.b.c.d]: drop the\n\
         # brackets and the IPv4-mapped prefix.\n\
         client=\"${{REMOTE_ADDR#\\[}}\"\n\
         client=\"${{client%\\]}}\"\n\
         client=\"${{client#::ffff:}}\"\n\
         echo \"Content-Type: text/plain\"\n\
         echo \"\"\n\
         echo \"host=$(hostname) client=$client{suffix}\"\n"
    )
}

/// The keep-alive server's per-connection script (run by `nc -ll -p 8080 -e`): answers
/// each request with a `Content-Length` body and waits for the next one, until the
/// client closes. Only shell builtins run per request, so answers stay quick.
pub(crate) fn keepalive_script(suffix: &str) -> String {
    format!(
        "#!/bin/sh\n\
         cr=$(printf '\\r')\n\
         body=\"host=$(hostname) keepalive{suffix}\"\n\
         while read -r request; do\n\
           while read -r header; do\n\
             header=\"${{header%\"$cr\"}}\"\n\
             [ -z \"$header\" ] && break\n\
           done\n\
           printf 'HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: %d\\r\\n\\r\\n%s\\n' $((${{#body}} + 1)) \"$body\"\n\
         done\n"
    )
}

/// The image's command: the keep-alive server in the background, httpd in front.
const WEB_CMD: &str = "nc -ll -p 8080 -e /www/keepalive & exec httpd -f -p 80 -h /www";

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\n";

enum Node {
    Dir,
    File(Vec<u8>),
    Symlink(&'static str),
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(MTIME);
    h.set_size(size);
    h
}

/// A deterministic tar of `entries` (paths relative, directories ending in `/`), in
/// sorted path order, so parents precede their children.
fn deterministic_tar(mut entries: Vec<(String, u32, Node)>) -> Result<Vec<u8>> {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for w in entries.windows(2) {
        if w[0].0 == w[1].0 {
            bail!("duplicate tar entry {}", w[0].0);
        }
    }
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    for (path, mode, node) in entries {
        match node {
            Node::Dir => {
                let mut h = header(tar::EntryType::Directory, mode, 0);
                b.append_data(&mut h, &path, std::io::empty())?;
            }
            Node::File(data) => {
                let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
                b.append_data(&mut h, &path, data.as_slice())?;
            }
            Node::Symlink(target) => {
                let mut h = header(tar::EntryType::Symlink, mode, 0);
                b.append_link(&mut h, &path, target)?;
            }
        }
    }
    Ok(b.into_inner()?)
}

/// The image's single layer: busybox, its applet links, passwd/group, /tmp and the CGI.
fn layer_tar(rootfs: &Rootfs, suffix: &str) -> Result<Vec<u8>> {
    let mut e: Vec<(String, u32, Node)> = vec![
        ("bin/".into(), 0o755, Node::Dir),
        (
            "bin/busybox".into(),
            0o755,
            Node::File(rootfs.busybox.clone()),
        ),
        ("etc/".into(), 0o755, Node::Dir),
        ("etc/passwd".into(), 0o644, Node::File(PASSWD.into())),
        ("etc/group".into(), 0o644, Node::File(GROUP.into())),
        ("root/".into(), 0o700, Node::Dir),
        ("tmp/".into(), 0o1777, Node::Dir),
        ("www/".into(), 0o755, Node::Dir),
        ("www/cgi-bin/".into(), 0o755, Node::Dir),
        (
            "www/cgi-bin/index.cgi".into(),
            0o755,
            Node::File(cgi_script(suffix).into_bytes()),
        ),
        (
            "www/keepalive".into(),
            0o755,
            Node::File(keepalive_script(suffix).into_bytes()),
        ),
    ];
    for a in &rootfs.applets {
        e.push((format!("bin/{a}"), 0o777, Node::Symlink("busybox")));
    }
    deterministic_tar(e)
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Serialize)]
struct ImageConfig<'a> {
    architecture: &'a str,
    config: ContainerConfig<'a>,
    created: &'a str,
    history: Vec<History<'a>>,
    os: &'a str,
    rootfs: RootFs,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig<'a> {
    env: Vec<&'a str>,
    cmd: Vec<&'a str>,
    working_dir: &'a str,
    exposed_ports: std::collections::BTreeMap<&'a str, serde_json::Map<String, serde_json::Value>>,
    /// busybox as PID 1 ignores SIGTERM; SIGKILL makes `docker stop` immediate.
    stop_signal: &'a str,
}

#[derive(Serialize)]
struct History<'a> {
    created: &'a str,
    created_by: String,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

fn config_json(spec: &Spec, layer_hex: &str) -> Result<Vec<u8>> {
    let cfg = ImageConfig {
        architecture: "amd64",
        config: ContainerConfig {
            env: vec!["PATH=/bin:/sbin:/usr/bin:/usr/sbin"],
            cmd: vec!["/bin/sh", "-c", WEB_CMD],
            working_dir: "/",
            exposed_ports: [
                ("80/tcp", serde_json::Map::new()),
                ("8080/tcp", serde_json::Map::new()),
            ]
            .into_iter()
            .collect(),
            stop_signal: "SIGKILL",
        },
        created: CREATED,
        history: vec![History {
            created: CREATED,
            created_by: format!(
                "shoal xtask images: busybox-static httpd, CGI /www/cgi-bin/index.cgi, keep-alive /www/keepalive on 8080 ({})",
                spec.full
            ),
        }],
        os: "linux",
        rootfs: RootFs {
            kind: "layers",
            diff_ids: vec![format!("sha256:{layer_hex}")],
        },
    };
    Ok(serde_json::to_vec(&cfg)?)
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

fn build(spec: &Spec, rootfs: &Rootfs) -> Result<Built> {
    let layer = layer_tar(rootfs, spec.suffix)?;
    let layer_hex = sha256_hex(&layer);
    let config = config_json(spec, &layer_hex)?;
    let config_hex = sha256_hex(&config);
    let config_name = format!("{config_hex}.json");
    let layer_name = format!("{layer_hex}/layer.tar");
    let manifest = serde_json::to_vec(&[ManifestEntry {
        config: config_name.clone(),
        repo_tags: vec![spec.full.to_owned()],
        layers: vec![layer_name.clone()],
    }])?;
    let repositories = serde_json::to_vec(
        &[(
            spec.repo,
            [(spec.tag, layer_hex.as_str())].into_iter().collect(),
        )]
        .into_iter()
        .collect::<std::collections::BTreeMap<&str, std::collections::BTreeMap<&str, &str>>>(),
    )?;
    let bytes = deterministic_tar(vec![
        (config_name, 0o644, Node::File(config.clone())),
        (format!("{layer_hex}/"), 0o755, Node::Dir),
        (layer_name, 0o644, Node::File(layer.clone())),
        ("manifest.json".into(), 0o644, Node::File(manifest)),
        ("repositories".into(), 0o644, Node::File(repositories)),
    ])?;
    Ok(Built {
        bytes,
        id: format!("sha256:{config_hex}"),
        config,
        layer,
    })
}

/// A lab image as a registry holds it: its config and its layer as blobs.
#[derive(Debug, Clone)]
pub struct RegistryImage {
    /// Repository without a registry, e.g. `shoal/web`.
    pub repo: &'static str,
    pub tag: &'static str,
    /// The image config; its digest is the image ID.
    pub config: Vec<u8>,
    /// The one layer, an uncompressed tar (pullers detect the compression, and this
    /// keeps the blobs as deterministic as the tarballs).
    pub layer: Vec<u8>,
    /// `sha256:<hex>` of the config: the ID a pulling dockerd reports.
    pub id: String,
}

/// Every lab image, built in memory, for pushing to a registry.
pub fn registry_images() -> Result<Vec<RegistryImage>> {
    let rootfs = Rootfs::from_host()?;
    SPECS
        .iter()
        .map(|spec| {
            let built = build(spec, &rootfs)?;
            Ok(RegistryImage {
                repo: spec.repo,
                tag: spec.tag,
                config: built.config,
                layer: built.layer,
                id: built.id,
            })
        })
        .collect()
}

/// `sha256:<hex>` of `data`, a registry's name for a blob.
pub fn digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// The image directory: `$SHOAL_IMAGE_DIR` if set and non-empty, else
/// [`DEFAULT_IMAGE_DIR`].
pub fn image_dir() -> PathBuf {
    match std::env::var_os("SHOAL_IMAGE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(DEFAULT_IMAGE_DIR),
    }
}

fn read_existing(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Builds every lab image and (re)writes its tarball in `dir` only when the bytes
/// differ from what is there. Prints one line per image.
pub fn build_all(dir: &Path) -> Result<Vec<LabImage>> {
    build_all_opts(dir, false)
}

/// [`build_all`]; with `quiet`, prints only the images it writes.
pub fn build_all_opts(dir: &Path, quiet: bool) -> Result<Vec<LabImage>> {
    let rootfs = Rootfs::from_host()?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::new();
    for spec in &SPECS {
        let built = build(spec, &rootfs)?;
        let path = dir.join(spec.file_name());
        if read_existing(&path)?.as_deref() == Some(built.bytes.as_slice()) {
            if !quiet {
                println!("images: {} {} up to date", spec.full, built.id);
            }
        } else {
            let tmp = dir.join(format!(".{}.tmp.{}", spec.file_name(), std::process::id()));
            fs::write(&tmp, &built.bytes).with_context(|| format!("writing {}", tmp.display()))?;
            fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
            println!(
                "images: {} {} written to {}",
                spec.full,
                built.id,
                path.display()
            );
        }
        out.push(LabImage {
            tag: spec.full,
            path,
            id: built.id,
        });
    }
    Ok(out)
}

/// True if every image's tarball in `dir` holds exactly what [`build_all`] would write.
/// Writes nothing and prints nothing.
pub fn all_up_to_date(dir: &Path) -> Result<bool> {
    let rootfs = Rootfs::from_host()?;
    for spec in &SPECS {
        let built = build(spec, &rootfs)?;
        if read_existing(&dir.join(spec.file_name()))?.as_deref() != Some(built.bytes.as_slice()) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The image ID the daemon at `docker_host` has for `tag`, if any.
fn loaded_id(docker_host: &str, tag: &str) -> Result<Option<String>> {
    let out = Command::new("docker")
        .args(["-H", docker_host, "image", "inspect", "-f", "{{.Id}}", tag])
        .output()
        .context("running docker image inspect")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such image") || err.contains("No such object") {
            return Ok(None);
        }
        bail!(
            "docker -H {docker_host} image inspect {tag} failed: {}",
            err.trim()
        );
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}

/// Loads every image into the daemon at `docker_host` (a `docker -H` value such as
/// `unix:///run/shoal-lab/h1/docker.sock`) unless it already has that image ID under
/// that tag.
pub fn load_into(docker_host: &str, images: &[LabImage]) -> Result<()> {
    for img in images {
        if loaded_id(docker_host, img.tag)?.as_deref() == Some(img.id.as_str()) {
            continue;
        }
        let out = Command::new("docker")
            .args(["-H", docker_host, "load", "-q", "-i"])
            .arg(&img.path)
            .output()
            .context("running docker load")?;
        if !out.status.success() {
            bail!(
                "docker -H {docker_host} load -i {} failed: {}",
                img.path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let now = loaded_id(docker_host, img.tag)?;
        if now.as_deref() != Some(img.id.as_str()) {
            return Err(anyhow!(
                "after docker load, {} in {docker_host} is {:?}, expected {}",
                img.tag,
                now,
                img.id
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::Read;

    fn fake_rootfs() -> Rootfs {
        Rootfs {
            busybox: b"\x7fELF not really busybox".to_vec(),
            applets: applet_names("[\n[[\nbusybox\nhostname\nhttpd\nsh\n\nsh\n"),
        }
    }

    /// path -> (entry type, mode, contents, link target)
    type Entries = BTreeMap<String, (tar::EntryType, u32, Vec<u8>, Option<String>)>;

    fn entries(tarball: &[u8]) -> Entries {
        let mut a = tar::Archive::new(tarball);
        let mut m = BTreeMap::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let h = e.header().clone();
            let link = e
                .link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned());
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            assert_eq!(h.mtime().unwrap(), MTIME, "{path}");
            assert_eq!(h.uid().unwrap(), 0, "{path}");
            assert_eq!(h.gid().unwrap(), 0, "{path}");
            assert!(
                m.insert(path, (h.entry_type(), h.mode().unwrap(), data, link))
                    .is_none(),
                "duplicate entry"
            );
        }
        m
    }

    fn manifest(e: &Entries) -> (String, String) {
        let m: serde_json::Value = serde_json::from_slice(&e["manifest.json"].2).unwrap();
        let m = m.as_array().unwrap();
        assert_eq!(m.len(), 1);
        let layers = m[0]["Layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        (
            m[0]["Config"].as_str().unwrap().to_owned(),
            layers[0].as_str().unwrap().to_owned(),
        )
    }

    #[test]
    fn applet_list_parsing() {
        assert_eq!(
            applet_names("sh\nbusybox\n[\n ls \nsh\n\nx/y\n"),
            vec!["[", "ls", "sh"]
        );
    }

    #[test]
    fn builds_are_byte_for_byte_deterministic() {
        let r = fake_rootfs();
        for spec in &SPECS {
            let a = build(spec, &r).unwrap();
            let b = build(spec, &r).unwrap();
            assert_eq!(a.bytes, b.bytes);
            assert_eq!(a.id, b.id);
        }
        assert_ne!(
            build(&SPECS[0], &r).unwrap().id,
            build(&SPECS[1], &r).unwrap().id
        );
    }

    #[test]
    fn manifest_points_at_files_present_and_ids_match() {
        let r = fake_rootfs();
        for spec in &SPECS {
            let built = build(spec, &r).unwrap();
            let e = entries(&built.bytes);
            let (config, layer) = manifest(&e);
            assert!(e.contains_key(&config), "{config} missing");
            assert!(e.contains_key(&layer), "{layer} missing");
            let m: serde_json::Value = serde_json::from_slice(&e["manifest.json"].2).unwrap();
            assert_eq!(m[0]["RepoTags"][0], spec.full);

            // Image ID = sha256 of the config bytes, which is also the file's name.
            let config_bytes = &e[&config].2;
            assert_eq!(built.id, format!("sha256:{}", sha256_hex(config_bytes)));
            assert_eq!(config, format!("{}.json", &built.id[7..]));

            // diff_id = sha256 of the layer tar, which is also its directory's name.
            let layer_bytes = &e[&layer].2;
            let cfg: serde_json::Value = serde_json::from_slice(config_bytes).unwrap();
            assert_eq!(
                cfg["rootfs"]["diff_ids"][0],
                format!("sha256:{}", sha256_hex(layer_bytes))
            );
            assert_eq!(layer, format!("{}/layer.tar", sha256_hex(layer_bytes)));
            assert_eq!(cfg["architecture"], "amd64");
            assert_eq!(cfg["os"], "linux");
            assert_eq!(cfg["config"]["Cmd"][0], "/bin/sh");
            assert_eq!(cfg["config"]["Cmd"][2], WEB_CMD);
            assert!(cfg["config"]["ExposedPorts"]["80/tcp"].is_object());
            assert!(cfg["config"]["ExposedPorts"]["8080/tcp"].is_object());
            assert_eq!(cfg["history"].as_array().unwrap().len(), 1);

            let repos: serde_json::Value = serde_json::from_slice(&e["repositories"].2).unwrap();
            assert_eq!(repos[spec.repo][spec.tag], sha256_hex(layer_bytes));
        }
    }

    #[test]
    fn layer_contents() {
        let r = fake_rootfs();
        for spec in &SPECS {
            let built = build(spec, &r).unwrap();
            let outer = entries(&built.bytes);
            let (_, layer) = manifest(&outer);
            let e = entries(&outer[&layer].2);

            let (kind, mode, script, _) = &e["www/cgi-bin/index.cgi"];
            assert_eq!(*kind, tar::EntryType::Regular);
            assert_eq!(*mode, 0o755);
            let script = String::from_utf8(script.clone()).unwrap();
            assert!(script.starts_with("#!/bin/sh\n"));
            assert!(script.contains("Content-Type: text/plain"));
            assert!(script.contains("client#::ffff:"));
            assert_eq!(script.contains("version=2"), spec.tag == "2");

            assert_eq!(e["tmp/"].0, tar::EntryType::Directory);
            assert_eq!(e["tmp/"].1, 0o1777);
            assert_eq!(e["bin/busybox"].1, 0o755);
            assert_eq!(e["bin/busybox"].2, r.busybox);
            for a in ["sh", "httpd", "hostname", "["] {
                let (kind, _, _, link) = &e[&format!("bin/{a}")];
                assert_eq!(*kind, tar::EntryType::Symlink);
                assert_eq!(link.as_deref(), Some("busybox"));
            }
            assert!(std::str::from_utf8(&e["etc/passwd"].2)
                .unwrap()
                .contains("nobody:x:65534"));
            assert!(std::str::from_utf8(&e["etc/group"].2)
                .unwrap()
                .starts_with("root:x:0:"));
        }
    }

    /// The hostname the scripts print when run on this machine.
    fn busybox_hostname() -> String {
        let out = Command::new(BUSYBOX).arg("hostname").output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[test]
    fn cgi_script_output() {
        // Runs the script with the host's busybox sh (the shell it gets in the image).
        if !Path::new(BUSYBOX).exists() {
            return;
        }
        let host = busybox_hostname();
        let host = host.as_str();
        for (suffix, addr, client) in [
            ("", "[::ffff:10.0.0.5]", "10.0.0.5"),
            ("", "::ffff:10.0.0.5", "10.0.0.5"),
            ("", "127.0.0.1", "127.0.0.1"),
            (" version=2", "[fd00::7]", "fd00::7"),
        ] {
            let out = Command::new(BUSYBOX)
                .args(["sh", "-c", &cgi_script(suffix), "index.cgi"])
                .env("REMOTE_ADDR", addr)
                .output()
                .unwrap();
            assert!(out.status.success());
            assert_eq!(
                String::from_utf8(out.stdout).unwrap(),
                format!("Content-Type: text/plain\n\nhost={host} client={client}{suffix}\n")
            );
        }
    }

    #[test]
    fn keepalive_script_answers_every_request_on_one_connection() {
        if !Path::new(BUSYBOX).exists() {
            return;
        }
        let host = busybox_hostname();
        let host = host.as_str();
        for suffix in ["", " version=2"] {
            let mut child = Command::new(BUSYBOX)
                .args(["sh", "-c", &keepalive_script(suffix), "keepalive"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let request = "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n";
            std::io::Write::write_all(
                child.stdin.as_mut().unwrap(),
                format!("{request}{request}").as_bytes(),
            )
            .unwrap();
            drop(child.stdin.take());
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success());
            let body = format!("host={host} keepalive{suffix}\n");
            let one = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            assert_eq!(
                String::from_utf8(out.stdout).unwrap(),
                format!("{one}{one}")
            );
        }
    }

    #[test]
    fn real_busybox_when_installed() {
        // Skips quietly on machines without busybox-static; the lab needs it anyway.
        if !Path::new(BUSYBOX).exists() {
            return;
        }
        let r = Rootfs::from_host().unwrap();
        assert!(r.applets.iter().any(|a| a == "httpd"));
        assert!(r.applets.iter().any(|a| a == "sh"));
        let dir = std::env::temp_dir().join(format!("shoal-images-test-{}", std::process::id()));
        let a = build_all(&dir).unwrap();
        let before: Vec<_> = a.iter().map(|i| fs::read(&i.path).unwrap()).collect();
        assert!(all_up_to_date(&dir).unwrap());
        let b = build_all(&dir).unwrap();
        assert_eq!(a, b);
        let after: Vec<_> = b.iter().map(|i| fs::read(&i.path).unwrap()).collect();
        assert_eq!(before, after);
        fs::write(&a[1].path, b"stale").unwrap();
        assert!(!all_up_to_date(&dir).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }
}
