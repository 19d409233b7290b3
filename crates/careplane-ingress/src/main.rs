//! `careplane-ingress <config.json>`: the proxy as a process of its own, for
//! tests and benchmarks (careplane's CLI runs the same `serve`).

// mimalloc rather than glibc's malloc: a proxied request makes a few dozen
// short-lived allocations (header maps, buffers, boxed bodies), and glibc's
// malloc and free were ~10% of the proxy's instructions. Measured in
// docs/benchmarks.md (Ingress, session 9).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path] = args.as_slice() else {
        eprintln!("usage: careplane-ingress <config.json>");
        std::process::exit(2);
    };
    if let Err(e) = careplane_ingress::serve(std::path::Path::new(path)) {
        eprintln!("careplane-ingress: {e}");
        std::process::exit(1);
    }
}
