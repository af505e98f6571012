//! LEB128 varints: 7 bits a byte, low bits first, the high bit set on
//! every byte but the last.

pub fn put(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The varint at `*at`, moving `*at` past it; a truncated one ends at the
/// end of `bytes`.
pub fn get(bytes: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    while let Some(b) = bytes.get(*at) {
        *at += 1;
        v |= u64::from(b & 0x7f) << shift.min(63);
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_round_trip() {
        let values = [0, 1, 0x7f, 0x80, 300, u32::MAX as u64, u64::MAX];
        let mut bytes = Vec::new();
        for v in values {
            super::put(&mut bytes, v);
        }
        let mut at = 0;
        let back: Vec<u64> = values.iter().map(|_| super::get(&bytes, &mut at)).collect();
        assert_eq!(back, values);
        assert_eq!(at, bytes.len());
    }
}
