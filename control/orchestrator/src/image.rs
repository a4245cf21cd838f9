//! Images from registries, through a node's dockerd (Engine API):
//!
//! - [`ImageRef`]: Docker's image references (`[registry/]repo[:tag][@digest]`), enough
//!   of them to pull, pin and find credentials.
//! - [`pull`]: `POST /images/create`, its JSON progress stream read to its end; an
//!   error in the stream (`errorDetail`/`error`, or the HTTP error before it) is the
//!   registry's answer.
//! - [`resolve_digest`]: `GET /distribution/{name}/json`, the manifest digest a tag
//!   points at now (the manager pins services to it).

use bollard::{auth::DockerCredentials, query_parameters::CreateImageOptions};
use futures::StreamExt;
use shoal_cluster::registry_auth::RegistryCredentials;

use crate::docker::DockerClient;

/// Docker Hub's name in references and in docker config files.
pub const DOCKER_HUB: &str = "docker.io";
/// The key of Docker Hub's credentials in a docker config file's `auths`.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// An image reference: `name[:tag][@digest]`, where `name` may start with a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Everything before the tag and digest, e.g. `192.168.77.100:5000/shoal/web`.
    pub name: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses a reference as Docker writes them; refuses what could not be one.
    pub fn parse(reference: &str) -> Result<ImageRef, String> {
        let bad = |why: &str| format!("invalid image reference {reference:?}: {why}");
        if reference.is_empty() || reference.chars().any(|c| c.is_whitespace()) {
            return Err(bad("empty or with spaces"));
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                let hex = digest
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("the digest must be sha256:<hex>"))?;
                if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(bad("the digest must be sha256:<64 hex digits>"));
                }
                (rest, Some(digest.to_owned()))
            }
            None => (reference, None),
        };
        // A tag is after the last ':' that comes after the last '/' (a ':' before it is a
        // registry's port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(rest[at + 1..].to_owned()))
            }
            None => (rest, None),
        };
        if name.is_empty() || name.starts_with('/') || name.ends_with('/') || name.contains("//") {
            return Err(bad("no repository name"));
        }
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                return Err(bad("a tag is 1 to 128 characters of [A-Za-z0-9_.-]"));
            }
        }
        Ok(ImageRef {
            name: name.to_owned(),
            tag,
            digest,
        })
    }

    /// The registry the image comes from: the name's first part when it looks like a
    /// host (has a `.` or `:`, or is `localhost`), else Docker Hub.
    pub fn registry(&self) -> &str {
        match self.name.split_once('/') {
            Some((first, _))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                first
            }
            _ => DOCKER_HUB,
        }
    }

    /// The tag, `latest` when none is given.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// `name:tag@digest`: the reference pinned to `digest` (Swarm's form).
    pub fn pinned(&self, digest: &str) -> String {
        format!("{}:{}@{digest}", self.name, self.tag_or_latest())
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Credentials as dockerd's `X-Registry-Auth` wants them.
fn docker_credentials(creds: &RegistryCredentials) -> DockerCredentials {
    DockerCredentials {
        username: Some(creds.username.clone()),
        password: Some(creds.password.clone()),
        serveraddress: Some(creds.server_address.clone()),
        ..Default::default()
    }
}

/// The message of an Engine API error: the registry's or dockerd's own words.
fn engine_message(e: bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
        bollard::errors::Error::DockerStreamError { error } => error,
        other => other.to_string(),
    }
}

/// Pulls `image` into the node's dockerd, with `creds` when given; returns once the
/// progress stream ends. The error is dockerd's account of the registry's answer
/// (`manifest unknown`, `no basic auth credentials`, ...).
pub async fn pull(
    docker: &DockerClient,
    image: &ImageRef,
    creds: Option<&RegistryCredentials>,
) -> Result<(), String> {
    let options = CreateImageOptions {
        from_image: Some(image.name.clone()),
        // A digest goes where the tag would: dockerd pulls exactly that manifest.
        tag: Some(
            image
                .digest
                .clone()
                .unwrap_or_else(|| image.tag_or_latest().to_owned()),
        ),
        ..Default::default()
    };
    let mut progress =
        docker
            .engine()
            .create_image(Some(options), None, creds.map(docker_credentials));
    // Every message to the end: a message with `errorDetail` (dockerd sends it with
    // `error`) arrives as an error, and dockerd may report one after layers succeeded.
    while let Some(item) = progress.next().await {
        if let Err(e) = item {
            return Err(engine_message(e));
        }
    }
    Ok(())
}

/// The digest of the manifest `image`'s tag points at now, asked of the registry
/// through dockerd (`GET /distribution/{name}/json`).
pub async fn resolve_digest(
    docker: &DockerClient,
    image: &ImageRef,
    creds: Option<&RegistryCredentials>,
) -> Result<String, String> {
    let reference = format!("{}:{}", image.name, image.tag_or_latest());
    let inspect = docker
        .engine()
        .inspect_registry_image(&reference, creds.map(docker_credentials))
        .await
        .map_err(engine_message)?;
    let digest = inspect.descriptor.digest.unwrap_or_default();
    if digest.starts_with("sha256:") {
        Ok(digest)
    } else {
        Err(format!("the registry gave no digest for {reference}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_split_into_name_tag_and_digest() {
        let r = ImageRef::parse("192.168.77.100:5000/shoal/web:1").unwrap();
        assert_eq!(r.name, "192.168.77.100:5000/shoal/web");
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.registry(), "192.168.77.100:5000");

        let r = ImageRef::parse("localhost:5000/app").unwrap();
        assert_eq!(
            (r.name.as_str(), r.tag.as_deref()),
            ("localhost:5000/app", None)
        );
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.pinned(D), format!("localhost:5000/app:latest@{D}"));

        let r = ImageRef::parse("shoal/web:1").unwrap();
        assert_eq!(r.registry(), DOCKER_HUB);
        let r = ImageRef::parse("nginx").unwrap();
        assert_eq!((r.name.as_str(), r.tag_or_latest()), ("nginx", "latest"));
        assert_eq!(r.registry(), DOCKER_HUB);
        assert_eq!(
            ImageRef::parse("registry.example.com/x")
                .unwrap()
                .registry(),
            "registry.example.com"
        );

        let pinned = format!("r:5000/a/b:2@{D}");
        let r = ImageRef::parse(&pinned).unwrap();
        assert_eq!(r.name, "r:5000/a/b");
        assert_eq!(r.tag.as_deref(), Some("2"));
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.to_string(), pinned);
        let r = ImageRef::parse(&format!("r:5000/a@{D}")).unwrap();
        assert_eq!((r.name.as_str(), r.tag.as_deref()), ("r:5000/a", None));
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in [
            "",
            "a b",
            ":1",
            "/a",
            "a/",
            "a//b",
            "a:",
            "a:b/c:",
            "a@sha256:12",
            "a@md5:0123",
            "a:t!",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?}");
        }
    }
}
