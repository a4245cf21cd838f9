//! `shoal swarm unlock`'s key, read as docker reads it: typed at a prompt with echo
//! off when stdin is a terminal, else everything piped on stdin. Never an argument, so
//! it stays out of shell histories and process lists.

use std::io::{self, BufRead, IsTerminal, Read};

use shoal_cluster::seal::KeyEncryptionKey;

use crate::api::{Request, Secret};

/// Reads the key from the terminal or stdin and makes the unlock request.
pub fn request() -> Result<Request, String> {
    let stdin = io::stdin();
    let text = if stdin.is_terminal() {
        prompt(&stdin)?
    } else {
        let mut text = String::new();
        stdin
            .lock()
            .take(64 * 1024)
            .read_to_string(&mut text)
            .map_err(|e| format!("reading the unlock key from stdin: {e}"))?;
        text
    };
    request_from(&text)
}

/// The unlock request for the key in `text` (white space around it ignored); a key
/// that is missing or not of Swarm's form is refused before the agent is asked.
pub fn request_from(text: &str) -> Result<Request, String> {
    let key = text.trim();
    if key.is_empty() {
        return Err("no unlock key given: type it at the prompt, or pipe it on stdin".into());
    }
    KeyEncryptionKey::parse_unlock_key(key).map_err(|e| e.to_string())?;
    Ok(Request::SwarmUnlock {
        key: Secret::new(key),
    })
}

fn prompt(stdin: &io::Stdin) -> Result<String, String> {
    eprint!("Enter unlock key: ");
    let line = {
        let _echo = EchoOff::on_stdin();
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the unlock key: {e}"))?;
        line
    };
    eprintln!();
    Ok(line)
}

/// The terminal's echo turned off while it lives (restored on drop); does nothing when
/// the terminal's settings cannot be read.
struct EchoOff {
    saved: Option<libc::termios>,
}

impl EchoOff {
    fn on_stdin() -> EchoOff {
        // SAFETY: termios is plain data; tcgetattr fills it or fails and leaves it unread.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 and a valid pointer to a termios.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return EchoOff { saved: None };
        }
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: as above; a failure leaves the echo on, which is only cosmetic.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &quiet) };
        EchoOff { saved: Some(saved) }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: fd 0 and the settings read from it.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
        }
    }
}
