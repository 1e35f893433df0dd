//! Hostile layers: every attempt to write outside the layer root is refused with an error naming
//! the entry, and a canary outside the root is untouched.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{Env, read, require_root, xattr};
use tar::EntryType;
use wharf_image::ImageErrorKind;
use wharf_test_support::oci::{Entry, ImageBuilder, Layer};

const CANARY: &str = "original";

/// A file and a directory next to the store, where a hostile layer would like to write.
struct Canary {
    file: PathBuf,
    dir: PathBuf,
}

impl Canary {
    fn plant(env: &Env) -> Canary {
        let file = env.dir.path().join("canary");
        let dir = env.dir.path().join("outside");
        std::fs::write(&file, CANARY).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("canary"), CANARY).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        Canary { file, dir }
    }

    fn assert_untouched(&self) {
        assert_eq!(read(&self.file), CANARY);
        assert_eq!(
            std::fs::metadata(&self.file).unwrap().nlink(),
            1,
            "hard-linked from a layer"
        );
        assert_eq!(read(&self.dir.join("canary")), CANARY);
        assert_eq!(
            std::fs::metadata(self.dir.join("canary")).unwrap().nlink(),
            1
        );
        let entries: Vec<_> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            entries,
            ["canary"],
            "something was created outside the layer"
        );
        assert_eq!(std::fs::metadata(&self.dir).unwrap().mode() & 0o7777, 0o750);
        assert_eq!(xattr(&self.dir, "trusted.overlay.opaque"), None);
        let siblings: Vec<_> = std::fs::read_dir(self.file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let mut siblings = siblings;
        siblings.sort();
        assert_eq!(
            siblings,
            ["canary", "outside", "store"],
            "something was created next to the store"
        );
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Pushes a one-layer image of `entries` and asserts that pulling it fails as hostile, naming
/// `entry`, and leaves no layer and no temporary files behind.
async fn assert_refused(env: &Env, tag: &str, entries: Vec<Entry>, entry: &str) {
    env.push(
        "hostile",
        tag,
        ImageBuilder::new().layer(Layer::new(entries)),
    )
    .await
    .unwrap();
    let err = env.pull(&format!("hostile:{tag}")).await.unwrap_err();
    assert_eq!(err.kind(), ImageErrorKind::HostileLayer, "{tag}: {err}");
    let message = err.to_string();
    assert!(
        message.contains(&format!("entry {entry:?}")),
        "{tag}: {message}"
    );
    assert!(
        env.layer_dirs().is_empty(),
        "{tag}: a hostile layer was kept"
    );
    assert!(
        env.tmp_entries().is_empty(),
        "{tag}: {:?}",
        env.tmp_entries()
    );
}

#[tokio::test]
async fn dotdot_and_absolute_paths_are_refused() -> anyhow::Result<()> {
    if !require_root("dotdot_and_absolute_paths_are_refused") {
        return Ok(());
    }
    let env = Env::new()?;
    let canary = Canary::plant(&env);
    // The layer is unpacked in <dir>/store/tmp/<layer>/: three levels up is <dir>.
    for (tag, path) in [
        ("dotdot", "../../../canary".to_owned()),
        ("inner-dotdot", "etc/../../../../canary".to_owned()),
        ("dot-dotdot", "./../../../outside/new".to_owned()),
        ("absolute", path_str(&canary.file).to_owned()),
    ] {
        assert_refused(
            &env,
            tag,
            vec![Entry::raw(path.as_bytes(), EntryType::Regular, "", "pwned")],
            &path,
        )
        .await;
        canary.assert_untouched();
    }
    let dir = format!("{}/sub", path_str(&canary.dir));
    assert_refused(
        &env,
        "absolute-dir",
        vec![Entry::raw(dir.as_bytes(), EntryType::Directory, "", "")],
        &dir,
    )
    .await;
    canary.assert_untouched();
    Ok(())
}

#[tokio::test]
async fn writing_through_a_symlink_that_leaves_the_root_is_refused() -> anyhow::Result<()> {
    if !require_root("writing_through_a_symlink_that_leaves_the_root_is_refused") {
        return Ok(());
    }
    let env = Env::new()?;
    let canary = Canary::plant(&env);
    let outside = path_str(&canary.dir).to_owned();
    let cases: Vec<(&str, Vec<Entry>, &str)> = vec![
        (
            "absolute-symlink",
            vec![
                Entry::symlink("escape", &outside),
                Entry::file("escape/canary", "pwned"),
            ],
            "escape/canary",
        ),
        (
            "relative-symlink",
            vec![
                Entry::symlink("up", "../../../outside"),
                Entry::file("up/canary", "pwned"),
            ],
            "up/canary",
        ),
        (
            "nested-symlink",
            vec![
                Entry::dir("a"),
                Entry::symlink("a/b", "../../../../outside"),
                Entry::file("a/b/new", "pwned"),
            ],
            "a/b/new",
        ),
        (
            "dir-through-symlink",
            vec![Entry::symlink("escape", &outside), Entry::dir("escape/sub")],
            "escape/sub/",
        ),
        (
            "symlink-through-symlink",
            vec![
                Entry::symlink("escape", &outside),
                Entry::symlink("escape/link", "/x"),
            ],
            "escape/link",
        ),
        (
            "device-through-symlink",
            vec![
                Entry::symlink("escape", &outside),
                Entry::char_device("escape/null", 1, 3),
            ],
            "escape/null",
        ),
        (
            "whiteout-through-symlink",
            vec![
                Entry::symlink("escape", &outside),
                Entry::whiteout("escape/canary"),
            ],
            "escape/.wh.canary",
        ),
        (
            "opaque-through-symlink",
            vec![Entry::symlink("escape", &outside), Entry::opaque("escape")],
            "escape/.wh..wh..opq",
        ),
    ];
    for (tag, entries, entry) in cases {
        assert_refused(&env, tag, entries, entry).await;
        canary.assert_untouched();
    }
    Ok(())
}

#[tokio::test]
async fn hard_links_to_outside_the_root_are_refused() -> anyhow::Result<()> {
    if !require_root("hard_links_to_outside_the_root_are_refused") {
        return Ok(());
    }
    let env = Env::new()?;
    let canary = Canary::plant(&env);
    let absolute = path_str(&canary.file).to_owned();
    let cases: Vec<(&str, Vec<Entry>, &str)> = vec![
        (
            "dotdot-target",
            vec![Entry::raw("hl", EntryType::Link, "../../../canary", "")],
            "hl",
        ),
        (
            "absolute-target",
            vec![Entry::raw("hl", EntryType::Link, absolute.as_bytes(), "")],
            "hl",
        ),
        (
            "target-through-symlink",
            vec![
                Entry::symlink("out", path_str(&canary.dir)),
                Entry::hardlink("hl", "out/canary"),
            ],
            "hl",
        ),
    ];
    for (tag, entries, entry) in cases {
        assert_refused(&env, tag, entries, entry).await;
        canary.assert_untouched();
    }
    Ok(())
}

#[tokio::test]
async fn a_symlink_in_the_final_component_is_replaced_not_followed() -> anyhow::Result<()> {
    if !require_root("a_symlink_in_the_final_component_is_replaced_not_followed") {
        return Ok(());
    }
    let env = Env::new()?;
    let canary = Canary::plant(&env);
    let entries = vec![
        // A file over a symlink to the canary: the symlink goes, the canary stays.
        Entry::symlink("f", path_str(&canary.file)),
        Entry::file_mode("f", "mine", 0o600).owned(1234, 1234),
        // A directory over a symlink to a directory outside.
        Entry::symlink("d", path_str(&canary.dir)),
        Entry::dir_mode("d", 0o700),
        // A hard link to a symlink links the symlink, not what it points to.
        Entry::symlink("s", path_str(&canary.file)),
        Entry::hardlink("h", "s"),
        // A symlink that stays inside is followed for parents, as tar would.
        Entry::dir("real"),
        Entry::symlink("alias", "real"),
        Entry::file("alias/inside", "ok"),
    ];
    env.push(
        "hostile",
        "final",
        ImageBuilder::new().layer(Layer::new(entries)),
    )
    .await?;
    let image = env.pull("hostile:final").await?;
    let root = &image.layers[0];
    canary.assert_untouched();
    let f = std::fs::symlink_metadata(root.join("f"))?;
    assert!(f.file_type().is_file());
    assert_eq!((f.uid(), f.mode() & 0o7777), (1234, 0o600));
    assert_eq!(read(&root.join("f")), "mine");
    let d = std::fs::symlink_metadata(root.join("d"))?;
    assert!(d.file_type().is_dir());
    assert_eq!(d.mode() & 0o7777, 0o700);
    let h = std::fs::symlink_metadata(root.join("h"))?;
    assert!(h.file_type().is_symlink());
    assert_eq!(h.ino(), std::fs::symlink_metadata(root.join("s"))?.ino());
    assert_eq!(read(&root.join("real/inside")), "ok");
    Ok(())
}

#[tokio::test]
async fn whiteouts_that_name_nothing_and_a_non_directory_root_are_refused() -> anyhow::Result<()> {
    if !require_root("whiteouts_that_name_nothing_and_a_non_directory_root_are_refused") {
        return Ok(());
    }
    let env = Env::new()?;
    let canary = Canary::plant(&env);
    assert_refused(
        &env,
        "empty-whiteout",
        vec![Entry::raw("etc/.wh.", EntryType::Regular, "", "")],
        "etc/.wh.",
    )
    .await;
    assert_refused(
        &env,
        "dotdot-whiteout",
        vec![Entry::raw("etc/.wh..", EntryType::Regular, "", "")],
        "etc/.wh..",
    )
    .await;
    assert_refused(
        &env,
        "root-file",
        vec![Entry::raw("./", EntryType::Regular, "", "x")],
        "./",
    )
    .await;
    canary.assert_untouched();
    Ok(())
}
