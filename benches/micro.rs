//! Micro-benchmarks of the I/O-free cores: the per-request and per-byte costs
//! that sit on the download path. `cargo bench --bench micro`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringdown::http::{ChunkedDecoder, ChunkedStep, parse_response_head_at, write_get_request};
use ringdown::plan::ChunkPlan;
use ringdown::restore::paths::map_name;
use ringdown::stats::{Stage, StageHistograms};
use ringdown::verify::Sha1Feed;
use sha1::{Digest, Sha1};

const B2_RANGE_RESPONSE: &[u8] = b"HTTP/1.1 206 Partial Content\r\n\
Server: nginx\r\nDate: Tue, 14 Nov 2023 22:13:20 GMT\r\nContent-Type: application/octet-stream\r\n\
Content-Length: 8388608\r\nContent-Range: bytes 0-8388607/1073741824\r\n\
x-bz-file-id: 4_z27c88f1d182b150646ff0b16_f1004ba650fe24e6b_d20231114_m221320_c005_v0501000_t0012\r\n\
x-bz-file-name: photos/2023/IMG_0001.jpg\r\nx-bz-content-sha1: 2aae6c35c94fcfb415dbe95f408b9ce91ee846ed\r\n\
x-bz-upload-timestamp: 1700000000123\r\nx-bz-info-src_last_modified_millis: 1700000000000\r\n\
Accept-Ranges: bytes\r\nCache-Control: max-age=0\r\n\r\n";

fn http(c: &mut Criterion) {
    let mut group = c.benchmark_group("http");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_response_head_b2_206", |b| {
        b.iter(|| {
            parse_response_head_at(black_box(B2_RANGE_RESPONSE), 1_700_000_000)
                .unwrap()
                .unwrap()
        })
    });
    let mut request = Vec::with_capacity(1024);
    group.bench_function("write_get_request_ranged", |b| {
        b.iter(|| {
            request.clear();
            write_get_request(
                &mut request,
                "GET",
                black_box("f005.backblazeb2.com"),
                black_box("/file/bkt/photos/2023/IMG_0001.jpg"),
                Some((8_388_608, 16_777_215)),
                &[(
                    "Authorization",
                    "4_002d0e5e8b0e7b80000000003_01b2c3d4_acct_abcdefghijklmnopqrstuvwxyz",
                )],
            )
            .unwrap();
        })
    });
    group.finish();

    // 1 MiB of payload in 16 KiB chunks: the framing cost per byte.
    let mut body = Vec::new();
    for _ in 0..64 {
        body.extend_from_slice(b"4000\r\n");
        body.extend_from_slice(&[b'x'; 16 * 1024]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut group = c.benchmark_group("chunked");
    group.throughput(Throughput::Bytes(1 << 20));
    group.bench_function("decode_1MiB_16KiB_chunks", |b| {
        b.iter(|| {
            let mut decoder = ChunkedDecoder::new();
            let mut position = 0;
            loop {
                match decoder.decode(&body[position..]).unwrap() {
                    ChunkedStep::Data { start, len } => position += start + len,
                    ChunkedStep::NeedMore { .. } => unreachable!(),
                    ChunkedStep::Done { .. } => break,
                }
            }
            decoder.payload_bytes()
        })
    });
    group.finish();
}

fn sha1(c: &mut Criterion) {
    let buffer = vec![0x5au8; 1 << 20];
    let mut group = c.benchmark_group("sha1");
    group.throughput(Throughput::Bytes(buffer.len() as u64));
    group.bench_function("1MiB", |b| b.iter(|| Sha1::digest(black_box(&buffer))));
    // Larger than the caches: the case of a buffer received a while ago.
    let cold = vec![0x5au8; 256 << 20];
    group.throughput(Throughput::Bytes(cold.len() as u64));
    group.sample_size(10);
    // The two feeds `verify::sha1_update` chooses between at run time.
    for feed in [Sha1Feed::Plain, Sha1Feed::TouchAhead] {
        group.bench_function(format!("256MiB_{}", feed.name()), |b| {
            b.iter(|| {
                let mut sha1 = Sha1::new();
                feed.update(&mut sha1, black_box(&cold));
                sha1.finalize()
            })
        });
    }
    group.finish();
}

fn plan(c: &mut Criterion) {
    let mut group = c.benchmark_group("plan");
    group.bench_function("1TiB_8MiB_parts_iterate_all", |b| {
        b.iter(|| {
            let plan = ChunkPlan::new(black_box(1 << 40), black_box(8 << 20));
            plan.iter().map(|chunk| chunk.len_bytes).sum::<u64>()
        })
    });
    group.bench_function("1TiB_chunk_lookup", |b| {
        let plan = ChunkPlan::new(1 << 40, 8 << 20);
        b.iter(|| plan.chunk(black_box(77_777)))
    });
    group.finish();
}

fn stats(c: &mut Criterion) {
    let mut group = c.benchmark_group("stats");
    let mut histograms = StageHistograms::new();
    group.bench_function("record", |b| {
        b.iter(|| {
            histograms.record(
                black_box(Stage::Recv),
                black_box(Duration::from_micros(1234)),
            )
        })
    });
    let mut other = StageHistograms::new();
    for micros in 1..10_000 {
        other.record(Stage::Recv, Duration::from_micros(micros * 37));
        other.record(Stage::Write, Duration::from_micros(micros));
    }
    group.bench_function("merge_10_stages", |b| {
        let mut target = StageHistograms::new();
        b.iter(|| target.merge(black_box(&other)))
    });
    group.bench_function("to_json_10_stages", |b| b.iter(|| other.to_json()));
    group.finish();
}

/// One full `b2_list_file_names` page as B2 v3 sends it (every entry with
/// `serverSideEncryption`, `fileInfo`, retention and legal hold).
fn listing_page(entries: usize) -> Vec<u8> {
    let files: Vec<String> = (0..entries)
        .map(|index| {
            format!(
                r#"{{"accountId":"a1","action":"upload","bucketId":"b1","contentLength":{len},"contentMd5":null,"contentSha1":"2aae6c35c94fcfb415dbe95f408b9ce91ee846ed","contentType":"application/octet-stream","fileId":"4_z27c88f1d182b150646ff0b16_f1004ba650fe24e6b_d20231114_m221320_c005_v0501000_t{index:04}","fileInfo":{{"src_last_modified_millis":"1700000000000"}},"fileName":"photos/2023/IMG_{index:05}.jpg","fileRetention":{{"isClientAuthorizedToRead":true,"value":{{"mode":null,"retainUntilTimestamp":null}}}},"legalHold":{{"isClientAuthorizedToRead":true,"value":null}},"replicationStatus":null,"serverSideEncryption":{{"algorithm":"AES256","mode":"SSE-B2"}},"uploadTimestamp":1700000000123}}"#,
                len = 1000 + index
            )
        })
        .collect();
    format!(r#"{{"files":[{}],"nextFileName":null}}"#, files.join(",")).into_bytes()
}

fn listing(c: &mut Criterion) {
    let mut group = c.benchmark_group("listing");
    let page = listing_page(10_000);
    group.throughput(Throughput::Elements(10_000));
    group.bench_function("parse_page_10000_entries", |b| {
        b.iter(|| ringdown::restore::listing::parse_page(black_box(&page)).unwrap())
    });
    group.finish();
}

fn names(c: &mut Criterion) {
    let mut group = c.benchmark_group("names");
    group.throughput(Throughput::Elements(1));
    group.bench_function("map_name_4_components", |b| {
        b.iter(|| map_name(black_box("2023/summer/IMG_0001.jpg"), black_box(false)))
    });
    group.finish();
}

criterion_group! {
    name = micro;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    targets = http, sha1, plan, stats, listing, names
}
criterion_main!(micro);
