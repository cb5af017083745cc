//! Retiring a candidate: its files move to `<name>/retired/` (where the registry and
//! its watcher never look, and `train` still counts its version number, so `name@N`
//! never comes back meaning another model), it leaves the catalog, and the audit log
//! says who did it. The serving version, and a version an alias points at, are refused:
//! promote another first, so retiring can never switch a decision off.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Registry, RegistryError};

/// The folder under a model's folder that retired versions move to.
pub const RETIRED_DIR: &str = "retired";

/// The append-only record of who promoted and retired what, in the models directory.
pub const AUDIT_FILE: &str = "audit.jsonl";

/// What a retire did.
#[derive(Debug, Clone, PartialEq)]
pub struct Retired {
    pub model: String,
    /// Where its artifact now lies.
    pub moved_to: PathBuf,
}

impl Registry {
    /// Retires the candidate `reference` (`name@N`) on behalf of `by` (a caller name).
    pub fn retire(&self, reference: &str, by: &str) -> Result<Retired, RegistryError> {
        if !reference.contains('@') {
            return Err(RegistryError::RetireWhich(
                reference.escape_debug().take(80).collect(),
            ));
        }
        let _writer = self.writer.lock();
        let catalog = self.catalog.load_full();
        let model = catalog.resolve(reference)?;
        let (name, version) = (model.name().to_string(), model.version());
        let refused = |reason: String| RegistryError::Retire {
            model: model.reference(),
            reason,
        };
        if catalog.serving(&name) == Some(version) {
            return Err(refused(format!(
                "it serves {name}; promote another version first (`streamscore models promote {name}@N`)"
            )));
        }
        if let Some((alias, _)) = catalog
            .aliases
            .iter()
            .find(|(_, target)| **target == (name.clone(), version))
        {
            return Err(refused(format!(
                "alias '{alias}' points at it; point the alias elsewhere first"
            )));
        }
        let folder = model
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.dir.join(&name));
        let moved_to =
            move_version_files(&folder, &name, version).map_err(|e| RegistryError::Directory {
                path: folder.display().to_string(),
                reason: format!("retiring {}: {e}", model.reference()),
            })?;
        self.update_locked(|catalog| {
            if let Some(versions) = catalog.models.get_mut(&name) {
                versions.remove(&version);
                if versions.is_empty() {
                    catalog.models.remove(&name);
                }
            }
        });
        self.append_audit("retire", &model.reference(), None, by);
        tracing::info!(model = %model.reference(), by, moved_to = %moved_to.display(), "model retired");
        Ok(Retired {
            model: model.reference(),
            moved_to,
        })
    }

    /// Appends one line to the audit log. The change it records has already happened;
    /// a log that cannot be written is an error in the server's log, not a refusal.
    pub(super) fn append_audit(&self, action: &str, model: &str, alias: Option<&str>, by: &str) {
        let now = crate::time::now_ms();
        let line = serde_json::json!({
            "at": crate::time::format_utc(now),
            "at_ms": now,
            "action": action,
            "model": model,
            "alias": alias,
            "by": by,
        });
        let path = self.dir.join(AUDIT_FILE);
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| {
                writeln!(file, "{line}")?;
                file.sync_all()
            });
        if let Err(error) = written {
            tracing::error!(path = %path.display(), %error, action, model, "audit log not written");
        }
    }
}

/// Moves `<name>-v<version>.*` (the artifact, its report and plots) from `folder` to
/// `folder/retired/`, the artifact last, so a crash midway leaves it loadable where it
/// was rather than half gone. Returns the artifact's new path.
fn move_version_files(folder: &Path, name: &str, version: u32) -> std::io::Result<PathBuf> {
    let retired = folder.join(RETIRED_DIR);
    std::fs::create_dir_all(&retired)?;
    let stem = format!("{name}-v{version}.");
    let artifact = format!("{name}-v{version}.json");
    let mut files: Vec<String> = std::fs::read_dir(folder)?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|file| file.starts_with(&stem) && *file != artifact)
        .collect();
    files.sort();
    files.push(artifact.clone());
    for file in &files {
        std::fs::rename(folder.join(file), retired.join(file))?;
    }
    std::fs::File::open(&retired)?.sync_all()?;
    std::fs::File::open(folder)?.sync_all()?;
    Ok(retired.join(artifact))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_versions_own_files_move_and_the_artifact_last() {
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "fraud-v2.json",
            "fraud-v2.report.md",
            "fraud-v2.roc.png",
            "fraud-v21.json",
            "fraud-v1.json",
        ] {
            std::fs::write(dir.path().join(file), file).unwrap();
        }
        let moved = move_version_files(dir.path(), "fraud", 2).unwrap();
        assert_eq!(moved, dir.path().join("retired/fraud-v2.json"));
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["fraud-v1.json", "fraud-v21.json", "retired"]);
        assert_eq!(
            std::fs::read_dir(dir.path().join("retired"))
                .unwrap()
                .count(),
            3
        );
        // The retired number is never handed out again.
        std::fs::remove_file(dir.path().join("fraud-v21.json")).unwrap();
        assert_eq!(crate::train::pipeline::next_version(dir.path(), "fraud"), 3);
    }
}
