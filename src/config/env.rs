//! Environment overrides: `UPLOAD_RECEIVER__SECTION__KEY=value` on top of
//! the configuration file's table, typed by the key's default.

/// Environment variables with this prefix override configuration keys.
pub const ENV_PREFIX: &str = "UPLOAD_RECEIVER__";

/// An override that names no usable key: the variable (or key) and why.
pub struct BadOverride {
    pub key: String,
    pub message: String,
}

/// Applies `UPLOAD_RECEIVER__…` variables on top of the file's table. A key
/// whose default is a string takes the value verbatim (so `site_name=2024`
/// stays a string); any other key reads it as a TOML value when it parses.
pub fn apply_overrides(
    table: &mut toml::Table,
    defaults: &toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), BadOverride> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(BadOverride { key: name, message: "empty section or key name".into() });
        }
        let default_is_string = lookup(defaults, &path).is_some_and(toml::Value::is_str);
        let value = if default_is_string { toml::Value::String(raw) } else { parse_env_value(&raw) };
        let (last, sections) = path.split_last().expect("split yields at least one part");
        let mut node = &mut *table;
        for section in sections {
            let entry = node.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            node = entry.as_table_mut().ok_or_else(|| BadOverride {
                key: path.join("."),
                message: format!("`{section}` is not a section"),
            })?;
        }
        node.insert(last.clone(), value);
    }
    Ok(())
}

fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (last, sections) = path.split_last()?;
    let mut node = table;
    for section in sections {
        node = node.get(section)?.as_table()?;
    }
    node.get(last)
}

/// `60` → integer, `true` → boolean, `["a"]` → array, anything else → string.
fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}
