//! `swarm update --autolock` and `swarm unlock-key [--rotate]` on a manager.
use super::*;

pub(super) async fn request(manager: &Manager, request: Request) -> Result<Reply, ApiError> {
    match request {
        Request::SwarmUpdate { autolock } => {
            let unlock_key = match autolock {
                Some(on) => {
                    let key = manager.set_autolock(on).await.map_err(cluster_error)?;
                    info!(autolock = on, "swarm updated");
                    key
                }
                None => None,
            };
            Ok(Reply::SwarmUpdated {
                unlock_key: unlock_key.map(|k| Secret::new(k.to_unlock_key())),
            })
        }
        Request::UnlockKey { rotate } => {
            let key = if rotate {
                let key = manager.rotate_unlock_key().await.map_err(cluster_error)?;
                info!("unlock key rotated");
                key
            } else {
                manager
                    .unlock_key()
                    .await
                    .map_err(cluster_error)?
                    .ok_or_else(|| ApiError::new("no unlock key is set"))?
            };
            Ok(Reply::UnlockKey {
                key: Secret::new(key.to_unlock_key()),
                rotated: rotate,
            })
        }
        other => Err(ApiError::new(format!(
            "internal error: {} reached the autolock handler",
            other.name()
        ))),
    }
}
