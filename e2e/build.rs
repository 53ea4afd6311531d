//! Builds the descriptor set of the Kubernetes protobuf wire schema (`proto/k8s-wire.txt`: the
//! fields of every message the API server reads and writes) with protox, so the server can
//! read and write protobuf bodies without `protoc`. The table becomes one proto2 file per
//! package in OUT_DIR, which protox compiles.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

/// One package's file: the packages it imports, and its messages' declarations.
#[derive(Default)]
struct File {
    imports: BTreeSet<String>,
    text: String,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const TABLE: &str = "proto/k8s-wire.txt";
    println!("cargo:rerun-if-changed={TABLE}");
    let table = std::fs::read_to_string(TABLE)?;
    let mut files: BTreeMap<String, File> = BTreeMap::new();
    let mut open: Option<String> = None;
    for (n, line) in table.lines().enumerate().filter(|(_, l)| !l.starts_with('#') && !l.trim().is_empty()) {
        let bad = || format!("{TABLE}:{}: not `message <name>` or `<number> <label> <type> <name>`", n + 1);
        let words: Vec<&str> = line.split_whitespace().collect();
        if let ["message", full] = words[..] {
            if let Some(prev) = open.take() {
                files.entry(prev).or_default().text.push_str("}\n");
            }
            let (package, name) = full.rsplit_once('.').ok_or_else(bad)?;
            writeln!(files.entry(package.to_string()).or_default().text, "message {name} {{")?;
            open = Some(package.to_string());
            continue;
        }
        let [number, label, ty, name] = words[..] else { return Err(bad().into()) };
        let package = open.clone().ok_or_else(bad)?;
        let file = files.entry(package.clone()).or_default();
        let value = if label == "map" { ty.split_once(',').ok_or_else(bad)?.1 } else { ty };
        if let Some((p, _)) = value.strip_prefix('.').and_then(|t| t.rsplit_once('.'))
            && p != package
        {
            file.imports.insert(p.to_string());
        }
        let decl = match ty.split_once(',') {
            Some((k, v)) if label == "map" => format!("  map<{k}, {v}> {name} = {number};"),
            _ => format!("  {label} {ty} {name} = {number};"),
        };
        writeln!(file.text, "{decl}")?;
    }
    if let Some(last) = open {
        files.entry(last).or_default().text.push_str("}\n");
    }
    let dir = PathBuf::from(std::env::var("OUT_DIR")?).join("proto");
    std::fs::create_dir_all(&dir)?;
    let mut names = Vec::new();
    for (package, file) in &files {
        let mut text = format!("syntax = \"proto2\";\npackage {package};\n");
        for i in &file.imports {
            writeln!(text, "import \"{i}.proto\";")?;
        }
        text.push_str(&file.text);
        let name = format!("{package}.proto");
        std::fs::write(dir.join(&name), text)?;
        names.push(name);
    }
    let mut compiler = protox::Compiler::new([&dir])?;
    compiler.include_imports(true).open_files(&names)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("k8s.fds");
    std::fs::write(out, compiler.encode_file_descriptor_set())?;
    Ok(())
}
