//! Helpers shared by the DNS crate's integration tests.

use shoal_dns::server::NetworkListener;

/// A listener for `network` on a free port of `ip`, UDP and TCP alike: the kernel picks
/// a free UDP port, and its TCP twin may be held by another process, so a few picks are
/// tried.
pub fn listener(ip: &str, network: &str) -> NetworkListener {
    for _ in 0..20 {
        let udp = std::net::UdpSocket::bind((ip, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        match std::net::TcpListener::bind((ip, port)) {
            Ok(tcp) => {
                return NetworkListener {
                    network: network.to_string(),
                    udp,
                    tcp,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => panic!("binding TCP {ip}:{port}: {e}"),
        }
    }
    panic!("no port of {ip} was free for both UDP and TCP in 20 tries")
}
