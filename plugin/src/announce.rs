//! Endpoint announcements between oncache hosts: when a container joins or leaves a network,
//! its host tells every peer, so that peers drop what they learned about that address (VXLAN
//! forwarding entries, fast-path caches) at once instead of sending to the old host until
//! entries age out. This is what makes an IP address reused on another host reachable.
//!
//! One JSON datagram per event on UDP `--announce-port` of the underlay. An announcement only
//! ever removes learned state, so a forged or lost one costs at most a trip over the slow path;
//! still, only datagrams from configured peers are acted on.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use tokio::net::UdpSocket;

pub const DEFAULT_PORT: u16 = 4788;
const MAX_DATAGRAM: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    Join,
    Leave,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub event: Event,
    pub vni: u32,
    pub ip: Ipv4Addr,
    pub mac: String,
}

impl Announcement {
    pub fn decode(b: &[u8]) -> Result<Announcement, String> {
        serde_json::from_slice(b).map_err(|e| format!("malformed announcement: {e}"))
    }
}

pub struct Announcer {
    sock: UdpSocket,
    port: u16,
}

impl Announcer {
    pub async fn bind(local: Ipv4Addr, port: u16) -> std::io::Result<Announcer> {
        let sock = UdpSocket::bind(SocketAddr::new(local.into(), port)).await?;
        Ok(Announcer { sock, port })
    }

    pub async fn send(&self, peers: &[IpAddr], a: &Announcement) {
        let bytes = serde_json::to_vec(a).expect("announcements serialize");
        for p in peers {
            if let Err(e) = self.sock.send_to(&bytes, SocketAddr::new(*p, self.port)).await {
                log::warn!("announcing to {p}: {e}");
            }
        }
    }

    pub async fn recv(&self) -> std::io::Result<(IpAddr, Vec<u8>)> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let (n, from) = self.sock.recv_from(&mut buf).await?;
        buf.truncate(n);
        Ok((from.ip(), buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_input() {
        let a = Announcement { event: Event::Join, vni: 7, ip: Ipv4Addr::new(10, 0, 0, 5), mac: "02:42:0a:00:00:05".into() };
        let b = serde_json::to_vec(&a).unwrap();
        assert_eq!(String::from_utf8_lossy(&b), r#"{"event":"join","vni":7,"ip":"10.0.0.5","mac":"02:42:0a:00:00:05"}"#);
        assert_eq!(Announcement::decode(&b).unwrap(), a);
        assert!(Announcement::decode(b"{\"event\":\"explode\"}").unwrap_err().contains("malformed"));
    }
}
