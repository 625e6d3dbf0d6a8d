// The Python bridge and its requirements are embedded in the binary (include_dir!,
// include_str!); rebuild when they change.
fn main() {
    println!("cargo:rerun-if-changed=python/dspex_bridge");
    println!("cargo:rerun-if-changed=python/requirements.txt");
    println!("cargo:rerun-if-changed=config/dspex.toml");
}
