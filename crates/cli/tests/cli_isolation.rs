//! Isolation per container through the `skerry` binary: the config default,
//! and the `io.skerry.isolation` annotation only where the config allows it.
//! The guest image is missing, so a container that gets a VM fails at the
//! image check; one that gets container mode runs.

mod common;

use std::{fs, path::Path};

use common::{stderr, World};

/// A world (no guest image) whose config ends with `runtime`, and a bundle
/// exiting 3 whose spec carries `annotation` as `io.skerry.isolation`.
fn setup(runtime: &str, annotation: Option<&str>) -> (World, String) {
    let mut w = World::with_image(Path::new("/nonexistent-image"));
    let mut config = fs::read_to_string(&w.config).unwrap();
    config.push_str(runtime);
    fs::write(&w.config, config).unwrap();
    w.plain = true; // bundles get a cgroup path of their own
    let dir = w.bundle("b", &["sh", "-c", "exit 3"]);
    common::edit_spec(&dir, |spec| {
        if let Some(value) = annotation {
            spec["annotations"] = serde_json::json!({ "io.skerry.isolation": value });
        }
    });
    (w, dir.to_string_lossy().into_owned())
}

/// `skerry run`: exit code and stderr; nothing may be left either way.
fn run(w: &World, bundle: &str) -> (Option<i32>, String) {
    let out = w.run(&["run", "--bundle", bundle, "c"]);
    w.assert_clean("c");
    (out.status.code(), stderr(&out))
}

#[test]
fn plain_the_config_default_decides_without_an_annotation() {
    require_plain!();
    let (w, b) = setup("[runtime]\nisolation = \"container\"\n", None);
    assert_eq!(run(&w, &b).0, Some(3), "{}", w.log());
    let (w, b) = setup("", None);
    let (code, err) = run(&w, &b);
    assert_eq!(code, Some(1));
    assert!(err.contains("guest kernel"), "a VM was not chosen: {err}");
}

#[test]
fn plain_an_allowed_annotation_chooses_container_mode() {
    require_plain!();
    let (w, b) = setup(
        "[runtime]\nallow_isolation_annotation = true\n",
        Some("container"),
    );
    assert_eq!(run(&w, &b).0, Some(3), "{}", w.log());
}

#[test]
fn a_disallowed_annotation_asking_for_weaker_isolation_is_refused() {
    let (w, b) = setup("", Some("container"));
    let (code, err) = run(&w, &b);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim_end(),
        "skerry: annotation io.skerry.isolation=container: asks for weaker isolation than \
         the configured \"vm\", and runtime.allow_isolation_annotation is false"
    );
}

#[test]
fn an_unknown_isolation_is_named() {
    let (w, b) = setup(
        "[runtime]\nallow_isolation_annotation = true\n",
        Some("none"),
    );
    let (code, err) = run(&w, &b);
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim_end(),
        "skerry: annotation io.skerry.isolation=\"none\": expected \"vm\" or \"container\""
    );
}
