//! MD5 digests of several messages at once, one message per SIMD lane.
//!
//! Every KPL aggregate carries the MD5 digest of its protobuf bytes, and
//! checking it was some 40 % of the consumer's CPU per de-aggregated user
//! record: one MD5 stream is a chain of dependent steps, so a core runs it
//! far below its width. A page holds many aggregates, and their digests are
//! independent: hashed eight side by side in 32-bit lanes (`wide`, which
//! uses SSE2 or AVX2 where the build has them and plain integers
//! elsewhere), the same work takes about a quarter of the time.

use md5::{Digest, Md5};
use wide::u32x8;

/// How many messages are hashed side by side.
pub(crate) const LANES: usize = 8;

/// The digests of `messages` (at most [`LANES`]), in order, into `out`.
///
/// All lanes step through the same number of blocks, the longest
/// message's: when the lengths differ so much that most lanes would idle,
/// each message is hashed on its own instead.
pub(crate) fn digests(messages: &[&[u8]], out: &mut [[u8; 16]; LANES]) {
    let messages = &messages[..messages.len().min(LANES)];
    let blocks: [usize; LANES] = std::array::from_fn(|lane| messages.get(lane).map_or(0, |m| padded_blocks(m.len())));
    let longest = blocks.iter().copied().max().unwrap_or(0);
    let total: usize = blocks.iter().sum();
    // Eight lanes cost about twice one stream per block (measured: 3.8
    // times one stream's throughput with every lane busy).
    if 2 * longest >= total {
        for (digest, message) in out.iter_mut().zip(messages) {
            *digest = Md5::digest(message).into();
        }
        return;
    }
    let mut state = INITIAL.map(u32x8::splat);
    let mut tail = [0u8; 64];
    let mut words = [[0u32; LANES]; 16];
    for at in 0..longest {
        for (lane, message) in messages.iter().enumerate() {
            let block: &[u8] = if at >= blocks[lane] {
                // A finished lane: its digest is taken, what it hashes now
                // is never read.
                &[0; 64]
            } else if let Some(whole) = message.get(at * 64..at * 64 + 64) {
                whole
            } else {
                padded_block(message, at, &mut tail);
                &tail
            };
            for (word, bytes) in words.iter_mut().zip(block.chunks_exact(4)) {
                word[lane] = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
        }
        compress(&mut state, &words.map(u32x8::new));
        for (lane, digest) in out.iter_mut().enumerate().take(messages.len()) {
            if blocks[lane] == at + 1 {
                for (part, word) in digest.chunks_exact_mut(4).zip(&state) {
                    part.copy_from_slice(&word.to_array()[lane].to_le_bytes());
                }
            }
        }
    }
}

/// MD5's initial state.
const INITIAL: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// MD5's constants, one per step: `floor(abs(sin(step + 1)) * 2^32)`.
#[rustfmt::skip]
const K: [u32; 64] = [
    0xd76a_a478, 0xe8c7_b756, 0x2420_70db, 0xc1bd_ceee, 0xf57c_0faf, 0x4787_c62a, 0xa830_4613, 0xfd46_9501,
    0x6980_98d8, 0x8b44_f7af, 0xffff_5bb1, 0x895c_d7be, 0x6b90_1122, 0xfd98_7193, 0xa679_438e, 0x49b4_0821,
    0xf61e_2562, 0xc040_b340, 0x265e_5a51, 0xe9b6_c7aa, 0xd62f_105d, 0x0244_1453, 0xd8a1_e681, 0xe7d3_fbc8,
    0x21e1_cde6, 0xc337_07d6, 0xf4d5_0d87, 0x455a_14ed, 0xa9e3_e905, 0xfcef_a3f8, 0x676f_02d9, 0x8d2a_4c8a,
    0xfffa_3942, 0x8771_f681, 0x6d9d_6122, 0xfde5_380c, 0xa4be_ea44, 0x4bde_cfa9, 0xf6bb_4b60, 0xbebf_bc70,
    0x289b_7ec6, 0xeaa1_27fa, 0xd4ef_3085, 0x0488_1d05, 0xd9d4_d039, 0xe6db_99e5, 0x1fa2_7cf8, 0xc4ac_5665,
    0xf429_2244, 0x432a_ff97, 0xab94_23a7, 0xfc93_a039, 0x655b_59c3, 0x8f0c_cc92, 0xffef_f47d, 0x8584_5dd1,
    0x6fa8_7e4f, 0xfe2c_e6e0, 0xa301_4314, 0x4e08_11a1, 0xf753_7e82, 0xbd3a_f235, 0x2ad7_d2bb, 0xeb86_d391,
];

/// How many 64-byte blocks a message of `len` bytes takes once padded
/// (a one bit, zeros, and its length in bits as 8 bytes).
fn padded_blocks(len: usize) -> usize {
    (len + 8) / 64 + 1
}

/// Block `at` of the padded form of `message`, one of its last two.
fn padded_block(message: &[u8], at: usize, out: &mut [u8; 64]) {
    *out = [0; 64];
    let start = at * 64;
    if let Some(rest) = message.get(start..) {
        out[..rest.len()].copy_from_slice(rest);
        out[rest.len()] = 0x80;
    }
    if at + 1 == padded_blocks(message.len()) {
        let bits = (message.len() as u64).wrapping_mul(8);
        out[56..].copy_from_slice(&bits.to_le_bytes());
    }
}

/// One step: `a` becomes `b + ((a + mix + k + word) <<< S)`.
#[inline(always)]
fn step<const S: u32>(a: &mut u32x8, b: u32x8, mix: u32x8, word: u32x8, k: u32) {
    let x = *a + mix + u32x8::splat(k) + word;
    *a = b + ((x << S) | (x >> (32 - S)));
}

/// The four steps of one group of a round, `$mix` its function and `$word`
/// which message word step `i` of the round reads.
macro_rules! steps {
    ($mix:ident, $a:ident, $b:ident, $c:ident, $d:ident, $w:ident, $round:expr, $word:expr, [$s0:expr, $s1:expr, $s2:expr, $s3:expr]) => {
        for group in 0..4 {
            let i = group * 4;
            let k = |i: usize| K[$round * 16 + i];
            step::<$s0>(&mut $a, $b, $mix($b, $c, $d), $w[$word(i)], k(i));
            step::<$s1>(&mut $d, $a, $mix($a, $b, $c), $w[$word(i + 1)], k(i + 1));
            step::<$s2>(&mut $c, $d, $mix($d, $a, $b), $w[$word(i + 2)], k(i + 2));
            step::<$s3>(&mut $b, $c, $mix($c, $d, $a), $w[$word(i + 3)], k(i + 3));
        }
    };
}

#[inline(always)]
fn mix_f(b: u32x8, c: u32x8, d: u32x8) -> u32x8 {
    d ^ (b & (c ^ d))
}

#[inline(always)]
fn mix_g(b: u32x8, c: u32x8, d: u32x8) -> u32x8 {
    c ^ (d & (b ^ c))
}

#[inline(always)]
fn mix_h(b: u32x8, c: u32x8, d: u32x8) -> u32x8 {
    b ^ c ^ d
}

#[inline(always)]
fn mix_i(b: u32x8, c: u32x8, d: u32x8) -> u32x8 {
    c ^ (b | !d)
}

/// MD5's compression of one block per lane into `state`.
fn compress(state: &mut [u32x8; 4], w: &[u32x8; 16]) {
    let [mut a, mut b, mut c, mut d] = *state;
    steps!(mix_f, a, b, c, d, w, 0, |i: usize| i, [7, 12, 17, 22]);
    steps!(mix_g, a, b, c, d, w, 1, |i: usize| (5 * i + 1) % 16, [5, 9, 14, 20]);
    steps!(mix_h, a, b, c, d, w, 2, |i: usize| (3 * i + 5) % 16, [4, 11, 16, 23]);
    steps!(mix_i, a, b, c, d, w, 3, |i: usize| (7 * i) % 16, [6, 10, 15, 21]);
    for (word, add) in state.iter_mut().zip([a, b, c, d]) {
        *word += add;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn check(messages: &[Vec<u8>]) {
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let mut out = [[0u8; 16]; LANES];
        digests(&refs, &mut out);
        for (message, digest) in messages.iter().zip(out) {
            assert_eq!(
                digest,
                <[u8; 16]>::from(Md5::digest(message)),
                "{} bytes",
                message.len()
            );
        }
    }

    #[test]
    fn messages_of_every_length_around_the_padding_edges_hash_as_md5_hashes_them() {
        // Each group of eight spans the lengths where the padding takes one
        // block or two, with lanes of equal and unequal lengths.
        let lengths: Vec<usize> = (0..=140).chain([1000, 4096, 10_500]).collect();
        let messages: Vec<Vec<u8>> = lengths
            .iter()
            .map(|&len| (0..len).map(|at| (at * 31 + len) as u8).collect())
            .collect();
        for group in messages.chunks(LANES) {
            check(group);
        }
        for len in [0, 55, 56, 64, 119, 120, 10_500] {
            check(&vec![vec![7u8; len]; LANES]);
        }
    }

    #[test]
    fn rfc_1321_test_vectors_hash_in_lanes() {
        let texts = ["", "a", "abc", "message digest", "abcdefghijklmnopqrstuvwxyz"];
        let expected = [
            "d41d8cd98f00b204e9800998ecf8427e",
            "0cc175b9c0f1b6a831c399e269772661",
            "900150983cd24fb0d6963f7d28e17f72",
            "f96b697d7cb7938d525a2f31aaf161d0",
            "c3fcd3d76192e4007dfb496cca67e13b",
        ];
        let refs: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
        let mut out = [[0u8; 16]; LANES];
        digests(&refs, &mut out);
        for (digest, hex) in out.iter().zip(expected) {
            let text: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(text, hex);
        }
    }

    proptest! {
        #[test]
        fn any_messages_hash_side_by_side_as_md5_hashes_them_one_by_one(
            messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..=LANES),
        ) {
            let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
            let mut out = [[0u8; 16]; LANES];
            digests(&refs, &mut out);
            for (message, digest) in messages.iter().zip(out) {
                prop_assert_eq!(digest, <[u8; 16]>::from(Md5::digest(message)));
            }
        }
    }
}
