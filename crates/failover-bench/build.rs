//! Compiles the minimal etcd protos in `proto/` with protox (pure Rust): no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script compiled in another checkout (a shared target dir)
    // would otherwise look for that checkout's protos.
    let root = format!("{}/proto", std::env::var("CARGO_MANIFEST_DIR")?);
    let files = ["etcd.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={root}/{file}");
    }
    let descriptors = protox::compile(files, [&root])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
