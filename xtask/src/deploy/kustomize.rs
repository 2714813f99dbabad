//! `deploy/` rendered as `kubectl apply -k` would apply it.

use std::{collections::BTreeSet, fs, path::Path};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use super::{read, yaml};

/// A manifest: where it came from, as JSON.
#[derive(Clone)]
pub(super) struct Resource {
    pub(super) source: String,
    pub(super) doc: Value,
}

/// Loads a kustomization's `resources` list from `dir` into `into`; returns the file names.
pub(super) fn load_resources(
    dir: &Path,
    files: &[Value],
    into: &mut Vec<Resource>,
) -> Result<BTreeSet<String>> {
    let mut listed = BTreeSet::new();
    for file in files {
        let file = file.as_str().context("resource path")?;
        listed.insert(file.to_owned());
        for doc in yaml::load(&dir.join(file))? {
            into.push(Resource {
                source: file.to_owned(),
                doc,
            });
        }
    }
    Ok(listed)
}

/// What `kubectl apply -k deploy/` applies. Only the kustomization features deploy/ uses are
/// rendered, and any other one is refused, so that this cannot drift from kustomize.
pub(super) fn render(dir: &Path) -> Result<Vec<Resource>> {
    let [kustomization] = &yaml::load(&dir.join("kustomization.yaml"))?[..] else {
        bail!("kustomization.yaml must hold one document");
    };
    for key in kustomization.as_object().context("kustomization")?.keys() {
        ensure!(
            matches!(
                key.as_str(),
                "apiVersion" | "kind" | "resources" | "configMapGenerator"
            ),
            "kustomization.yaml: `{key}` is not rendered by xtask's checks"
        );
    }
    let mut resources = Vec::new();
    let listed = load_resources(
        dir,
        kustomization["resources"]
            .as_array()
            .context("kustomization resources")?,
        &mut resources,
    )?;
    // A manifest in deploy/ that the kustomization forgets is never applied.
    for entry in fs::read_dir(dir).context("deploy/")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            ensure!(
                listed.contains(&name),
                "deploy/{name} is not in kustomization.yaml"
            );
        }
    }
    for generator in kustomization["configMapGenerator"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let options = &generator["options"];
        ensure!(
            options["disableNameSuffixHash"] == true,
            "configMapGenerator: the name hash suffix is not rendered by xtask's checks"
        );
        let mut data = serde_json::Map::new();
        for file in generator["files"].as_array().context("generator files")? {
            let file = file.as_str().context("generator file")?;
            let key = Path::new(file).file_name().context("file name")?;
            data.insert(
                key.to_string_lossy().into_owned(),
                Value::String(read(&dir.join(file))?),
            );
        }
        resources.push(Resource {
            source: "kustomization.yaml configMapGenerator".into(),
            doc: json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": generator["name"],
                    "namespace": generator["namespace"],
                    "labels": options["labels"],
                },
                "data": data,
            }),
        });
    }
    Ok(resources)
}

/// The one resource of `kind`.
pub(super) fn find<'a>(resources: &'a [Resource], kind: &str) -> Result<&'a Value> {
    let mut found = resources.iter().filter(|r| r.doc["kind"] == kind);
    match (found.next(), found.next()) {
        (Some(r), None) => Ok(&r.doc),
        _ => bail!("deploy/ must hold exactly one {kind}"),
    }
}
