//! The manifest rewriters on the shape `bench/run.py` serves: a 100-segment live HLS
//! playlist, plain and gzip, and an ffmpeg-made DASH MPD.
//!
//!     cargo bench --bench manifest

use std::io::Write;

use criterion::{criterion_group, criterion_main, Criterion};
use streamgate::manifest::{Encoding, Kind, Tagger};

#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const ID: &str = "0b5d3c5e-1f0e-4c1e-9a57-3f1a8f0c2b11";

fn playlist() -> Vec<u8> {
    let mut p = String::from(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:1000\n",
    );
    for n in 1000..1100 {
        p.push_str(&format!("#EXTINF:2.000000,\nlive/seg{n}.ts\n"));
    }
    p.into_bytes()
}

fn rewrite(c: &mut Criterion) {
    let t = Tagger::new("sg_stream", &[]);
    let hls = playlist();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&hls).unwrap();
    let gz = gz.finish().unwrap();
    let mpd = include_bytes!("../fuzz/seeds/manifest/dash.mpd");
    c.bench_function("hls 100 segments", |b| {
        b.iter(|| t.rewrite(Kind::Hls, &hls, ID).unwrap())
    });
    c.bench_function("hls 100 segments gzip", |b| {
        b.iter(|| {
            t.rewrite_encoded(Kind::Hls, Encoding::Gzip, &gz, ID, 1 << 22)
                .unwrap()
        })
    });
    c.bench_function("dash ffmpeg mpd", |b| {
        b.iter(|| t.rewrite(Kind::Dash, mpd, ID).unwrap())
    });
}

criterion_group!(benches, rewrite);
criterion_main!(benches);
