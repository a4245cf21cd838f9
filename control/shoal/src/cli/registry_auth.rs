//! `--with-registry-auth`: the user's credentials for an image's registry, read from
//! their docker config file (`$DOCKER_CONFIG/config.json`, else
//! `~/.docker/config.json`), the `auths` entries `docker login` writes (`auth`: base64
//! of `user:password`). Credential helpers (`credsStore`, `credHelpers`) are not run:
//! a registry known only to one is refused with that reason.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::Value;
use shoal_cluster::registry_auth::RegistryCredentials;
use shoal_orchestrator::image::{ImageRef, DOCKER_HUB, DOCKER_HUB_AUTH_KEY};

/// The docker config file this user's `docker login` writes.
pub fn docker_config_file() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("config.json"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or("--with-registry-auth: neither DOCKER_CONFIG nor HOME is set")?;
    Ok(PathBuf::from(home).join(".docker/config.json"))
}

/// The credentials for `image`'s registry in the user's docker config file.
pub fn credentials_for(image: &str) -> Result<RegistryCredentials, String> {
    let reference = ImageRef::parse(image)?;
    let path = docker_config_file()?;
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "--with-registry-auth: reading {}: {e} (run `docker login {}` first)",
            path.display(),
            reference.registry()
        )
    })?;
    credentials_in(&text, &path, reference.registry())
}

/// A registry's host as a config key names it: `https://host:port/v1/` -> `host:port`.
fn key_host(key: &str) -> &str {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

/// The credentials for `registry` in the config file text `text` (read from `path`).
fn credentials_in(text: &str, path: &Path, registry: &str) -> Result<RegistryCredentials, String> {
    let config: Value = serde_json::from_str(text)
        .map_err(|e| format!("--with-registry-auth: {} is not JSON: {e}", path.display()))?;
    let wanted: &[&str] = if registry == DOCKER_HUB {
        &["index.docker.io", "docker.io", "registry-1.docker.io"]
    } else {
        &[registry]
    };
    let found = config
        .get("auths")
        .and_then(Value::as_object)
        .and_then(|auths| {
            auths
                .iter()
                .find(|(key, _)| wanted.contains(&key_host(key)))
        });
    let Some((key, entry)) = found else {
        let helper = config
            .get("credHelpers")
            .and_then(|h| h.get(registry))
            .or_else(|| config.get("credsStore"))
            .and_then(Value::as_str);
        return Err(match helper {
            Some(h) => format!(
                "--with-registry-auth: {} keeps the credentials for {registry} in the credential helper {h:?}, which shoal does not run; log in with a config that stores them (DOCKER_CONFIG)",
                path.display()
            ),
            None => format!(
                "--with-registry-auth: no credentials for {registry} in {} (run `docker login {registry}` first)",
                path.display()
            ),
        });
    };
    let bad = |why: &str| {
        format!(
            "--with-registry-auth: the entry {key:?} in {}: {why}",
            path.display()
        )
    };
    let (username, password) = match entry.get("auth").and_then(Value::as_str) {
        Some(auth) if !auth.is_empty() => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| bad("`auth` is not base64"))?;
            let text = String::from_utf8(decoded).map_err(|_| bad("`auth` is not UTF-8"))?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| bad("`auth` is not user:password"))?;
            (u.to_owned(), p.to_owned())
        }
        _ => {
            let field = |name: &str| entry.get(name).and_then(Value::as_str).map(str::to_owned);
            match (field("username"), field("password")) {
                (Some(u), Some(p)) => (u, p),
                _ => return Err(bad("no `auth` (nor username and password)")),
            }
        }
    };
    let server_address = if registry == DOCKER_HUB {
        DOCKER_HUB_AUTH_KEY.to_owned()
    } else {
        registry.to_owned()
    };
    Ok(RegistryCredentials {
        server_address,
        username,
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, registry: &str) -> Result<RegistryCredentials, String> {
        credentials_in(text, Path::new("/home/u/.docker/config.json"), registry)
    }

    #[test]
    fn logins_are_found_by_registry_host() {
        // "alice:pa:ss" in base64.
        let config = r#"{"auths": {
            "192.168.77.100:5001": {"auth": "YWxpY2U6cGE6c3M="},
            "https://index.docker.io/v1/": {"auth": "Ym9iOmh1Yg=="},
            "http://other:5000/v2/": {"username": "carol", "password": "c"}
        }}"#;
        let c = read(config, "192.168.77.100:5001").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "pa:ss")
        );
        assert_eq!(c.server_address, "192.168.77.100:5001");
        let hub = read(config, DOCKER_HUB).unwrap();
        assert_eq!(hub.username, "bob");
        assert_eq!(hub.server_address, DOCKER_HUB_AUTH_KEY);
        assert_eq!(read(config, "other:5000").unwrap().username, "carol");
    }

    #[test]
    fn missing_or_bad_entries_say_what_to_do() {
        let err = read(r#"{"auths": {}}"#, "r:5000").unwrap_err();
        assert!(err.contains("docker login r:5000"), "{err}");
        let err = read(r#"{"auths": {}, "credsStore": "desktop"}"#, "r:5000").unwrap_err();
        assert!(err.contains("credential helper \"desktop\""), "{err}");
        let err = read(r#"{"auths": {"r:5000": {"auth": "!!"}}}"#, "r:5000").unwrap_err();
        assert!(err.contains("not base64"), "{err}");
        let err = read("{", "r:5000").unwrap_err();
        assert!(err.contains("not JSON"), "{err}");
        // No password in any message.
        let err = read(
            r#"{"auths": {"r:5000": {"auth": "bm9jb2xvbg=="}}}"#,
            "r:5000",
        )
        .unwrap_err();
        assert!(err.contains("not user:password"), "{err}");
    }
}
