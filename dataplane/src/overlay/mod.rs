//! The overlay dataplane: VXLAN networks between nodes, containers attached to them.
//!
//! - [`state`]: declared node state (networks, local and remote endpoints) and its checks.
//! - [`model`]: the kernel side in the reconciler's terms, the ops, the kernel trait.
//! - [`plan`]: declared state -> desired kernel state -> ops (pure, unit-tested).
//! - [`reconciler`]: applies declared state, keeping the last good one.
//! - [`netns`]: pinned network namespaces, running code inside one.
//! - [`kernel`]: [`model::OverlayKernel`] over rtnetlink.

pub mod kernel;
pub mod model;
pub mod netns;
pub mod plan;
pub mod reconciler;
pub mod state;
