//! Header checks the fast path makes before it trusts a frame, as pure functions over bytes so
//! that host unit tests reach them (the eBPF programs call the same code). Each refuses what
//! the kernel's slow path would drop, so the fast path never delivers a frame the slow path
//! would not: an IPv4 header without options and with a valid checksum (br_netfilter and
//! ip_rcv check it), lengths that fit the frame, a UDP length that matches, a TCP header of at
//! least 20 bytes, and VXLAN flags exactly "VNI present" (the kernel's VXLAN device drops
//! frames with any other flag or reserved bit set).

/// IPv4 version 4, header length 5 words: no options.
pub const IPV4_VER_IHL: u8 = 0x45;
/// The fragment offset and "more fragments" bits.
const IPV4_FRAG_MASK: u16 = 0x3fff;
/// VXLAN flags byte with only the I bit ("VNI valid").
pub const VXLAN_FLAGS_I: u8 = 0x08;

/// Whether the ones' complement sum over a 20-byte IPv4 header (checksum included) is right.
#[inline(always)]
pub fn ipv4_checksum_ok(h: &[u8; 20]) -> bool {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 20 {
        sum += u32::from(u16::from_be_bytes([h[i], h[i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum == 0xffff
}

/// A plain IPv4 header: no options, not a fragment, a valid checksum, and a total length that
/// holds the header, `l4_min` bytes of transport header and fits in the `available` bytes
/// after the Ethernet header (more is Ethernet padding, which the receiver trims).
#[inline(always)]
pub fn ipv4_ok(h: &[u8; 20], l4_min: u32, available: u32) -> bool {
    let tot_len = u32::from(u16::from_be_bytes([h[2], h[3]]));
    h[0] == IPV4_VER_IHL
        && u16::from_be_bytes([h[6], h[7]]) & IPV4_FRAG_MASK == 0
        && tot_len >= 20 + l4_min
        && tot_len <= available
        && ipv4_checksum_ok(h)
}

/// The IPv4 total length of a header [`ipv4_ok`] accepted.
#[inline(always)]
pub fn ipv4_tot_len(h: &[u8; 20]) -> u32 {
    u32::from(u16::from_be_bytes([h[2], h[3]]))
}

/// A UDP header whose length field is what the IPv4 packet carries after its header.
#[inline(always)]
pub fn udp_len_ok(udp: &[u8; 8], ip_tot_len: u32) -> bool {
    u32::from(u16::from_be_bytes([udp[4], udp[5]])) == ip_tot_len - 20
}

/// A TCP data offset (the high nibble of byte 12) of at least 5 words, within the packet.
#[inline(always)]
pub fn tcp_len_ok(doff_byte: u8, ip_tot_len: u32) -> bool {
    let len = u32::from(doff_byte >> 4) * 4;
    len >= 20 && 20 + len <= ip_tot_len
}

/// A VXLAN header with the I flag only, and every reserved bit zero; its VNI.
#[inline(always)]
pub fn vxlan_vni(v: &[u8; 8]) -> Option<u32> {
    if v[0] != VXLAN_FLAGS_I || v[1] != 0 || v[2] != 0 || v[3] != 0 || v[7] != 0 {
        return None;
    }
    Some(u32::from_be_bytes([0, v[4], v[5], v[6]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid header: 10.0.0.1 -> 10.0.0.2, UDP, total length `tot_len`.
    fn with_len(tot_len: u16) -> [u8; 20] {
        let mut h = [0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        h[2..4].copy_from_slice(&tot_len.to_be_bytes());
        let mut sum: u32 = h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        h
    }

    /// A valid header carrying UDP and `payload` bytes.
    fn header(payload: u16) -> [u8; 20] {
        with_len(28 + payload)
    }

    #[test]
    fn a_valid_header_passes_and_every_single_bit_flip_fails() {
        let h = header(100);
        assert!(ipv4_ok(&h, 8, 128));
        for byte in 0..20 {
            for bit in 0..8 {
                let mut m = h;
                m[byte] ^= 1 << bit;
                assert!(!ipv4_ok(&m, 8, 128), "byte {byte} bit {bit} flipped still passes");
            }
        }
    }

    #[test]
    fn options_fragments_and_lengths_are_refused() {
        assert!(ipv4_ok(&with_len(128), 8, 128), "exactly the frame");
        assert!(ipv4_ok(&with_len(60), 8, 128), "Ethernet padding after the packet");
        assert!(!ipv4_ok(&with_len(129), 8, 128), "longer than the frame: truncated");
        assert!(!ipv4_ok(&with_len(27), 8, 128), "no room for the UDP header");
        let mut opts = header(0);
        opts[0] = 0x46;
        assert!(!ipv4_ok(&opts, 8, 128));
        let mut frag = header(0);
        frag[6] = 0x20; // MF
        assert!(!ipv4_ok(&frag, 8, 128));
    }

    #[test]
    fn udp_tcp_and_vxlan_fields() {
        assert!(udp_len_ok(&[0, 1, 0, 2, 0, 108, 0, 0], 128));
        assert!(!udp_len_ok(&[0, 1, 0, 2, 0, 109, 0, 0], 128));
        assert!(tcp_len_ok(0x50, 40) && tcp_len_ok(0x80, 60));
        assert!(!tcp_len_ok(0x40, 128), "data offset below 5 words");
        assert!(!tcp_len_ok(0xf0, 60), "header longer than the packet");
        assert_eq!(vxlan_vni(&[0x08, 0, 0, 0, 0x00, 0x01, 0x40, 0]), Some(320));
        for (i, v) in [0x0c, 0x01, 0x01, 0x01, 0, 0, 0, 0x01].iter().enumerate() {
            let mut h = [0x08, 0, 0, 0, 0x00, 0x01, 0x40, 0];
            h[i] ^= v;
            if i == 0 || (1..4).contains(&i) || i == 7 {
                assert_eq!(vxlan_vni(&h), None, "byte {i} set: {h:?}");
            }
        }
        assert_eq!(vxlan_vni(&[0x00, 0, 0, 0, 0, 0, 1, 0]), None, "no I flag");
    }
}
