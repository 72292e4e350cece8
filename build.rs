//! Rebuilds when a migration is added: `sqlx::migrate!` embeds the
//! migrations at compile time, and cargo does not watch that folder by
//! itself (a new file would otherwise be silently left out of the binary).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
