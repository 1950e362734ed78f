//! CIDR parsing and overlap, for IPv4 and IPv6 pools and endpoint addresses.

use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = |why: &str| format!("invalid CIDR {s:?}: {why}");
        let (a, p) = s.split_once('/').ok_or_else(|| bad("missing /prefix"))?;
        let addr: IpAddr = a.parse().map_err(|_| bad("bad address"))?;
        let prefix: u8 = p.parse().map_err(|_| bad("bad prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad("prefix length too long"));
        }
        Ok(Cidr { addr, prefix })
    }

    fn bits(&self) -> (u128, u8) {
        match self.addr {
            IpAddr::V4(a) => (u32::from(a) as u128, 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        }
    }

    /// True when the two ranges share at least one address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let ((a, wa), (b, wb)) = (self.bits(), other.bits());
        if wa != wb {
            return false;
        }
        let p = self.prefix.min(other.prefix);
        let shift = wa - p;
        // A zero-length prefix covers everything (and u128 >> 128 would overflow).
        shift as u32 >= 128 || (a >> shift) == (b >> shift)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn overlap() {
        assert!(c("10.1.0.0/16").overlaps(&c("10.1.2.0/24")));
        assert!(c("10.1.2.0/24").overlaps(&c("10.1.0.0/16")));
        assert!(!c("10.1.0.0/24").overlaps(&c("10.1.1.0/24")));
        assert!(c("0.0.0.0/0").overlaps(&c("192.0.2.0/24")));
        assert!(!c("10.0.0.0/8").overlaps(&c("fd00::/8")));
        assert!(c("fd00:1::/64").overlaps(&c("fd00:1::5/128")));
        assert!(c("::/0").overlaps(&c("fd00::/8")));
    }

    #[test]
    fn parse_errors_name_the_input() {
        assert!(Cidr::parse("10.0.0.0").unwrap_err().contains("missing /prefix"));
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("10.0.0.0/33"));
        assert!(Cidr::parse("x/8").is_err());
        assert_eq!(c("10.1.2.3/24").to_string(), "10.1.2.3/24");
    }
}
