//! `careplane-ingress <config.json>`: the proxy as a process of its own, for
//! tests and benchmarks (careplane's CLI runs the same `serve`).

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
