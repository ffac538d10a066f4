//! A hint to glibc's allocator, given once per process, when the first
//! consumer is built.
//!
//! Every page read takes a few MiB — its body, its payloads and text, its
//! records — freed once it is read. glibc gives big freed blocks back to the
//! kernel: a block above its mmap threshold is unmapped when freed, and free
//! memory above its trim threshold at the top of a heap is released with
//! `madvise`. Each page then faults the same memory in again, and a page
//! fault costs microseconds on a VM: on the benchmark's emulator run that
//! was a quarter of the consumer's CPU (19,000 faults for 200,000 records).
//! glibc raises both thresholds itself whenever a big mapped block is freed
//! (the mmap threshold to its size, the trim threshold to twice that; see
//! mallopt(3)), so one block of [`HINT`] allocated and freed sets them above
//! a page's buffers. It is never written to: with another allocator it
//! costs no memory, and does nothing.

use std::sync::Once;

/// Above the few MiB of a usual page; a page up to Kinesis' 10 MiB raises
/// glibc's thresholds further itself, as it is freed.
const HINT: usize = 8 << 20;

/// Gives the hint, the first time only.
pub(crate) fn hint() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| drop(std::hint::black_box(Vec::<u8>::with_capacity(HINT))));
}
