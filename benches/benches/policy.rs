//! Policy decision time with 10 000 policies mesh-wide and ~10 on the target workload.
//!
//! Prints p50/p99 per decision (individually timed, timer overhead subtracted) for the cached
//! per-workload path the proxy uses and for the uncached lookup, at 10 and 10 000 mesh-wide
//! policies, then runs the same cases under criterion. Target (DESIGN.md): ≤ 1 µs, independent
//! of policies on other workloads.

use std::hint::black_box;

use criterion::{criterion_group, Criterion};
use ward_benches::{mesh, percentiles, request};

fn report() {
    let req = request();
    let attrs = req.attributes();
    println!("policy decision latency (ns per decision, timer overhead subtracted)");
    println!("| mesh-wide policies | path | p50 | p99 |");
    println!("|---:|---|---:|---:|");
    for (namespaces, per_ns) in [(1, 10), (1000, 10)] {
        let set = mesh(namespaces, per_ns, 10);
        let total = set.policies().len();
        let wp = set.for_workload(&req.namespace, &req.labels);
        assert!(
            wp.evaluate(&attrs).allowed,
            "fixture request must be allowed"
        );
        let (p50, p99) = percentiles(|| {
            black_box(wp.evaluate(black_box(&attrs)));
        });
        println!("| {total} | cached per workload (proxy data path) | {p50:.0} | {p99:.0} |");
        let (p50, p99) = percentiles(|| {
            let wp = set.for_workload(black_box(&req.namespace), &req.labels);
            black_box(wp.evaluate(black_box(&attrs)).allowed);
        });
        println!("| {total} | lookup + evaluate | {p50:.0} | {p99:.0} |");
    }
}

fn bench(c: &mut Criterion) {
    let req = request();
    let attrs = req.attributes();
    for (namespaces, per_ns) in [(1, 10), (1000, 10)] {
        let set = mesh(namespaces, per_ns, 10);
        let total = set.policies().len();
        let wp = set.for_workload(&req.namespace, &req.labels);
        c.bench_function(&format!("decision/cached/{total}_policies"), |b| {
            b.iter(|| black_box(wp.evaluate(black_box(&attrs)).allowed))
        });
        c.bench_function(&format!("decision/lookup+eval/{total}_policies"), |b| {
            b.iter(|| {
                let wp = set.for_workload(black_box(&req.namespace), &req.labels);
                black_box(wp.evaluate(black_box(&attrs)).allowed)
            })
        });
    }
}

criterion_group!(benches, bench);

fn main() {
    report();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
