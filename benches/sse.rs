//! SSE splitting cost: `cargo bench --bench sse`.
//!
//! One event of 1, 4 and 16 MiB arrives in 16 KiB chunks (how a server streams a large
//! tools/list answer or tool result); the splitter must find its end scanning each byte once, so
//! the time per byte stays flat as the event grows. (Rescanning the buffer from its start on
//! every chunk cost ~10 s for 16 MiB.) Each size is timed as the best of 5 runs.

use bytes::Bytes;
use mcp_warden::mcp::sse::Splitter;
use std::hint::black_box;
use std::time::Instant;

const CHUNK: usize = 16 << 10;

/// Splits one event of `size` bytes fed in chunks; returns seconds.
fn split_once(event: &Bytes) -> f64 {
    let mut sp = Splitter::new(32 << 20);
    let t0 = Instant::now();
    let mut found = 0;
    for chunk in event.chunks(CHUNK) {
        sp.push(chunk);
        while let Some(e) = sp.next_event().expect("within the limit") {
            found += e.len();
        }
    }
    let took = t0.elapsed().as_secs_f64();
    assert_eq!(black_box(found), event.len(), "the whole event was found");
    took
}

fn main() {
    println!(
        "SSE splitter: one event in {} KiB chunks, best of 5",
        CHUNK >> 10
    );
    println!("{:>10} {:>12} {:>12}", "event", "time", "ns/byte");
    let mut per_byte = Vec::new();
    for mib in [1usize, 4, 16] {
        let size = mib << 20;
        let mut text = b"event: message\ndata: ".to_vec();
        text.resize(size - 2, b'x');
        text.extend_from_slice(b"\n\n");
        let event = Bytes::from(text);
        let best = (0..5)
            .map(|_| split_once(&event))
            .fold(f64::INFINITY, f64::min);
        let ns = best * 1e9 / size as f64;
        per_byte.push(ns);
        println!("{:>7} MiB {:>9.2} ms {:>12.3}", mib, best * 1e3, ns);
    }
    let growth = per_byte[2] / per_byte[0];
    println!(
        "cost per byte at 16 MiB / at 1 MiB: {growth:.2} ({})",
        if growth < 2.0 { "linear" } else { "NOT linear" }
    );
}
