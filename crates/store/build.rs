// sqlx::migrate! embeds migrations/ at compile time; without this a
// migration added to an already built tree would not be in the binary.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
