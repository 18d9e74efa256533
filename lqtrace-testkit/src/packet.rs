//! IPv4+TCP packets with valid checksums, written by hand: the raw-socket SYN flood's
//! ([`crate::flood`]) and the TUN fake peer's of the tests (every SYN and final ACK under the
//! test's control).

/// TCP flag bits.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// The MSS option (1460) a SYN carries.
pub const MSS_1460: [u8; 4] = [2, 4, 0x05, 0xb4];

/// One's-complement sum of `data` (16-bit big-endian words, odd byte padded) added to `sum`.
pub fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        sum += u32::from(*b) << 8;
    }
    sum
}

/// The Internet checksum of a sum from [`csum_add`] (RFC 1071).
pub fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One IPv4 (DF, TTL 64) + TCP (window 65535) packet.
#[derive(Debug, Clone, Copy)]
pub struct Tcp<'a> {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ip_id: u16,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// TCP options, a multiple of 4 bytes, at most 40.
    pub options: &'a [u8],
    pub payload: &'a [u8],
}

impl Tcp<'_> {
    pub fn len(&self) -> usize {
        40 + self.options.len() + self.payload.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// The packet into `buf[..self.len()]` (which must be at least that long).
    pub fn write_into(&self, buf: &mut [u8]) -> usize {
        assert!(self.options.len().is_multiple_of(4) && self.options.len() <= 40);
        let total = self.len();
        let tcp_len = total - 20;
        let p = &mut buf[..total];
        p.fill(0);
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
        p[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
        p[8] = 64; // TTL
        p[9] = libc::IPPROTO_TCP as u8;
        p[12..16].copy_from_slice(&self.src);
        p[16..20].copy_from_slice(&self.dst);
        let ipsum = csum_fold(csum_add(0, &p[..20]));
        p[10..12].copy_from_slice(&ipsum.to_be_bytes());
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&self.sport.to_be_bytes());
        t[2..4].copy_from_slice(&self.dport.to_be_bytes());
        t[4..8].copy_from_slice(&self.seq.to_be_bytes());
        t[8..12].copy_from_slice(&self.ack.to_be_bytes());
        t[12] = (((20 + self.options.len()) / 4) as u8) << 4;
        t[13] = self.flags;
        t[14..16].copy_from_slice(&65535u16.to_be_bytes()); // window
        // t[16..18] checksum, t[18..20] urgent pointer
        let o = self.options.len();
        t[20..20 + o].copy_from_slice(self.options);
        t[20 + o..].copy_from_slice(self.payload);
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&self.src);
        pseudo[4..8].copy_from_slice(&self.dst);
        pseudo[9] = libc::IPPROTO_TCP as u8;
        pseudo[10..12].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        let sum = csum_fold(csum_add(csum_add(0, &pseudo), t));
        t[16..18].copy_from_slice(&sum.to_be_bytes());
        total
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.len()];
        self.write_into(&mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_verify() {
        let p = Tcp {
            src: [127, 1, 0, 7],
            dst: [127, 0, 0, 1],
            ip_id: 3,
            sport: 4242,
            dport: 9000,
            seq: 77,
            ack: 0,
            flags: SYN,
            options: &MSS_1460,
            payload: b"x",
        }
        .to_vec();
        assert_eq!(p.len(), 45);
        assert_eq!(csum_fold(csum_add(0, &p[..20])), 0, "IP header checksum");
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&p[12..16]);
        pseudo[4..8].copy_from_slice(&p[16..20]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&25u16.to_be_bytes());
        assert_eq!(
            csum_fold(csum_add(csum_add(0, &pseudo), &p[20..])),
            0,
            "TCP checksum (odd length)"
        );
        assert_eq!((p[32] >> 4, p[33]), (6, SYN), "24-byte header, SYN");
    }
}
