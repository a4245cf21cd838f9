//! The image every task sandbox runs, made by the agent itself so that no host needs a
//! registry or a preloaded image for it: one static program, `/pause`, that waits for
//! signals forever and does nothing else (it only holds the task's network namespace).
//!
//! The program is a minimal ELF executable written here byte by byte (no libc, no
//! loader: a loop around the `pause` system call, `ppoll` where there is none), and the
//! image a `docker save`-format tarball written deterministically (fixed timestamps,
//! owners and entry order), so every agent of one version loads the same image ID. A
//! signal without a handler is ignored by PID 1 of a container, so the image's stop
//! signal is SIGKILL.
use serde_json::json;
use sha2::{Digest, Sha256};

/// What the sandbox image is called on every node.
pub const TAG: &str = "shoal/sandbox:1";
const REPO: &str = "shoal/sandbox";
const VERSION: &str = "1";
/// The program's path in the image.
pub const PAUSE: &str = "/pause";

/// Timestamp of the image and its file (2024-01-01T00:00:00Z).
const CREATED: &str = "2024-01-01T00:00:00Z";
const MTIME: u64 = 1_704_067_200;
/// Where the program is loaded (the usual base of a static executable).
const BASE: u64 = 0x40_0000;
const ELF_HEADER: usize = 64;
const PROGRAM_HEADER: usize = 56;

/// The pause loop for one architecture: Docker's name for it, the ELF machine number
/// and the machine code (which must start at the loop and never return).
struct Arch {
    docker: &'static str,
    machine: u16,
    code: &'static [u8],
}

/// x86-64: `1: mov eax, 34 (pause); syscall; jmp 1b`.
const X86_64: Arch = Arch {
    docker: "amd64",
    machine: 62, // EM_X86_64
    code: &[
        0xb8, 0x22, 0x00, 0x00, 0x00, // mov eax, 34
        0x0f, 0x05, // syscall
        0xeb, 0xf7, // jmp -9 (back to mov)
    ],
};

/// AArch64 has no `pause`: `mov x8, #73 (ppoll); 1: mov x0..x3, #0; svc #0; b 1b`
/// (no descriptors, no timeout, no mask: sleeps until a signal).
const AARCH64: Arch = Arch {
    docker: "arm64",
    machine: 183, // EM_AARCH64
    code: &[
        0x28, 0x09, 0x80, 0xd2, // mov x8, #73
        0x00, 0x00, 0x80, 0xd2, // mov x0, #0
        0x01, 0x00, 0x80, 0xd2, // mov x1, #0
        0x02, 0x00, 0x80, 0xd2, // mov x2, #0
        0x03, 0x00, 0x80, 0xd2, // mov x3, #0
        0x01, 0x00, 0x00, 0xd4, // svc #0
        0xfb, 0xff, 0xff, 0x17, // b -20 (back to mov x0)
    ],
};

/// The architecture this agent runs on, or why there is no pause program for it.
fn this_arch() -> Result<&'static Arch, String> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(&X86_64),
        "aarch64" => Ok(&AARCH64),
        other => Err(format!(
            "no task sandbox program for the {other} architecture (x86_64 and aarch64 only)"
        )),
    }
}

/// A static ELF executable that runs `code` from its first byte.
fn elf(machine: u16, code: &[u8]) -> Vec<u8> {
    let size = (ELF_HEADER + PROGRAM_HEADER + code.len()) as u64;
    let entry = BASE + (ELF_HEADER + PROGRAM_HEADER) as u64;
    let mut b = Vec::with_capacity(size as usize);
    // e_ident: magic, 64-bit, little-endian, version 1, System V ABI, padding.
    b.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    b.extend_from_slice(&machine.to_le_bytes()); // e_machine
    b.extend_from_slice(&1u32.to_le_bytes()); // e_version
    b.extend_from_slice(&entry.to_le_bytes()); // e_entry
    b.extend_from_slice(&(ELF_HEADER as u64).to_le_bytes()); // e_phoff
    b.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    b.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    b.extend_from_slice(&(ELF_HEADER as u16).to_le_bytes()); // e_ehsize
    b.extend_from_slice(&(PROGRAM_HEADER as u16).to_le_bytes()); // e_phentsize
    b.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    b.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
                                  // One PT_LOAD segment, read and execute, mapping the whole file at BASE.
    b.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    b.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R | X
    b.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    b.extend_from_slice(&BASE.to_le_bytes()); // p_vaddr
    b.extend_from_slice(&BASE.to_le_bytes()); // p_paddr
    b.extend_from_slice(&size.to_le_bytes()); // p_filesz
    b.extend_from_slice(&size.to_le_bytes()); // p_memsz
    b.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    b.extend_from_slice(code);
    b
}

/// The pause program for this host.
pub fn pause_program() -> Result<Vec<u8>, String> {
    let arch = this_arch()?;
    Ok(elf(arch.machine, arch.code))
}

/// The sandbox image as `docker load` takes it, and the ID dockerd gives it.
#[derive(Clone, Debug)]
pub struct SandboxImage {
    pub tarball: Vec<u8>,
    /// `sha256:<hex>` of the image config.
    pub id: String,
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A deterministic tar of `(path, mode, content)` files and `path/` directories (content
/// None), in the order given.
fn tar(entries: &[(&str, u32, Option<&[u8]>)]) -> Result<Vec<u8>, String> {
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    for (path, mode, content) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(match content {
            Some(_) => tar::EntryType::Regular,
            None => tar::EntryType::Directory,
        });
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_size(content.map_or(0, |c| c.len() as u64));
        b.append_data(&mut h, path, content.unwrap_or_default())
            .map_err(|e| format!("writing {path} into the sandbox image: {e}"))?;
    }
    b.into_inner()
        .map_err(|e| format!("finishing the sandbox image: {e}"))
}

/// Builds the sandbox image for this host.
pub fn build() -> Result<SandboxImage, String> {
    let arch = this_arch()?;
    let program = elf(arch.machine, arch.code);
    let layer = tar(&[(&PAUSE[1..], 0o755, Some(&program))])?;
    let layer_hex = sha256_hex(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": arch.docker,
        "os": "linux",
        "created": CREATED,
        "config": {
            "Entrypoint": [PAUSE],
            "StopSignal": "SIGKILL",
        },
        "history": [{
            "created": CREATED,
            "created_by": "shoal: the task sandbox, a program that only waits (holds the task's network namespace)",
        }],
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_hex}")] },
    }))
    .map_err(|e| e.to_string())?;
    let config_hex = sha256_hex(&config);
    let config_name = format!("{config_hex}.json");
    let layer_dir = format!("{layer_hex}/");
    let layer_name = format!("{layer_hex}/layer.tar");
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": [TAG],
        "Layers": [layer_name],
    }]))
    .map_err(|e| e.to_string())?;
    let repositories =
        serde_json::to_vec(&json!({ REPO: { VERSION: layer_hex } })).map_err(|e| e.to_string())?;
    let tarball = tar(&[
        (&config_name, 0o644, Some(&config)),
        (&layer_dir, 0o755, None),
        (&layer_name, 0o644, Some(&layer)),
        ("manifest.json", 0o644, Some(&manifest)),
        ("repositories", 0o644, Some(&repositories)),
    ])?;
    Ok(SandboxImage {
        tarball,
        id: format!("sha256:{config_hex}"),
    })
}

#[cfg(test)]
mod tests {
    use std::{
        io::Read,
        os::unix::{fs::PermissionsExt, process::ExitStatusExt},
        process::Command,
        time::{Duration, Instant},
    };

    use super::*;

    #[test]
    fn the_image_is_the_same_bytes_every_time_and_holds_only_the_program() {
        let a = build().unwrap();
        let b = build().unwrap();
        assert_eq!(a.tarball, b.tarball);
        assert_eq!(a.id, b.id);

        let mut outer = tar::Archive::new(a.tarball.as_slice());
        let mut names = Vec::new();
        let mut layer = Vec::new();
        for e in outer.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            if path.ends_with("layer.tar") {
                e.read_to_end(&mut layer).unwrap();
            }
            names.push(path);
        }
        assert!(names.contains(&"manifest.json".to_owned()), "{names:?}");
        assert!(names.contains(&format!("{}.json", &a.id[7..])), "{names:?}");
        let mut inner = tar::Archive::new(layer.as_slice());
        let files: Vec<(String, u32)> = inner
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(files, [("pause".to_owned(), 0o755)]);
    }

    /// The program this host would put in the image runs, sleeps, and ends only when
    /// killed.
    #[test]
    fn the_pause_program_sleeps_until_killed() {
        let dir = std::env::temp_dir().join(format!("shoal-pause-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pause");
        std::fs::write(&path, pause_program().unwrap()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut child = Command::new(&path).spawn().unwrap();
        let stat = format!("/proc/{}/stat", child.id());
        // Poll until the program (not the forked test) is asleep: its name is `pause`
        // and its state S.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = String::new();
        while Instant::now() < deadline {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the program ended by itself"
            );
            seen = std::fs::read_to_string(&stat).unwrap_or_default();
            if seen.contains("(pause) S") {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(seen.contains("(pause) S"), "never asleep: {seen}");
        // A signal without a handler other than KILL would end it too outside a
        // container; in one, as PID 1, only KILL does. KILL it.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
