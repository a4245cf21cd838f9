//! Types shared by shoal's eBPF programs (no_std) and userspace.
//!
//! Everything here is plain data: fixed-width integers, no `bool`, `enum` or `Option`
//! inside a map value, so the kernel and userspace agree on the layout byte for byte.
//! (Map value structs, when they come, get `aya::Pod` impls behind a `user` feature.)
#![no_std]

pub mod mesh;
pub mod underlay;
pub mod vip;
