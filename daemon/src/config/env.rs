//! `UNIMOD_<SECTION>__<KEY>` environment overrides, applied to the parsed TOML table before
//! it is deserialised (so unknown keys in the environment are rejected like unknown keys in
//! the file). `__` separates levels: `UNIMOD_KAFKA__TOPICS__TEXT=t` sets `kafka.topics.text`.
//!
//! Values are read as TOML values when they parse as one (`32`, `true`, `[16, 32]`,
//! `"quoted"`), otherwise as plain strings (`127.0.0.1:9092`). When the file already holds a
//! string at that key, the variable is always taken as a string.

use super::ConfigError;

const PREFIX: &str = "UNIMOD_";

/// Applies every `UNIMOD_*__*` variable of `vars` to `table`.
pub(super) fn apply_overrides(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX) && k.contains("__"))
        .collect();
    // Deterministic order: a parent table set by one variable, children by others.
    vars.sort();
    for (var, raw) in vars {
        let path: Vec<String> =
            var[PREFIX.len()..].split("__").map(|p| p.to_ascii_lowercase()).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Env { var, message: "empty key segment".into() });
        }
        set_path(table, &path, &raw).map_err(|message| ConfigError::Env { var: var.clone(), message })?;
    }
    Ok(())
}

fn set_path(table: &mut toml::Table, path: &[String], raw: &str) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut cur = table;
    for (i, seg) in parents.iter().enumerate() {
        let entry = cur
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("{} is not a table", path[..=i].join(".")))?;
    }
    let existing_is_string = matches!(cur.get(last), Some(toml::Value::String(_)));
    let value = if existing_is_string { toml::Value::String(raw.to_owned()) } else { parse_value(raw) };
    cur.insert(last.clone(), value);
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}
