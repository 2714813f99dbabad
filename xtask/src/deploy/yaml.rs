//! YAML documents read as JSON values, which the checks and the validators work on.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use yaml_rust2::{Yaml, YamlLoader};

use super::read;

/// A YAML node as the JSON value Kubernetes reads it as; anchors and aliases are refused.
pub(super) fn to_json(yaml: &Yaml) -> Result<Value> {
    Ok(match yaml {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => json!(i),
        Yaml::Real(r) => json!(r
            .parse::<f64>()
            .with_context(|| format!("bad number {r}"))?),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect::<Result<_>>()?),
        Yaml::Hash(map) => {
            let mut object = serde_json::Map::new();
            for (key, value) in map {
                let Yaml::String(key) = key else {
                    bail!("non-string key {key:?}");
                };
                object.insert(key.clone(), to_json(value)?);
            }
            Value::Object(object)
        }
        Yaml::Alias(_) | Yaml::BadValue => bail!("unsupported YAML node {yaml:?}"),
    })
}

/// Every document of a YAML file.
pub(super) fn load(path: &Path) -> Result<Vec<Value>> {
    let docs = YamlLoader::load_from_str(&read(path)?)
        .with_context(|| format!("{} is not YAML", path.display()))?;
    docs.iter()
        .map(to_json)
        .collect::<Result<_>>()
        .with_context(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_maps_to_json() {
        let docs = YamlLoader::load_from_str("a: [1, 2.5, x, true, null]\nb: {c: '10%'}").unwrap();
        assert_eq!(
            to_json(&docs[0]).unwrap(),
            json!({ "a": [1, 2.5, "x", true, null], "b": { "c": "10%" } })
        );
    }
}
