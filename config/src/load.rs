//! Turning TOML text into a checked configuration, with located errors.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::ConfigError;

/// Reads a whole config file, naming it on failure.
pub(crate) fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })
}

/// Makes relative `paths` relative to the folder of `config_file` instead.
pub(crate) fn resolve_paths<'a>(config_file: &Path, paths: impl IntoIterator<Item = &'a mut Option<PathBuf>>) {
    let base = config_file.parent().unwrap_or(Path::new(""));
    for p in paths.into_iter().flatten() {
        *p = base.join(&*p);
    }
}

/// Parses `text`, then runs `validate`; every error names `origin`, the line
/// and the key where they are known.
pub(crate) fn parse<T: DeserializeOwned>(
    text: &str,
    origin: &str,
    validate: impl FnOnce(&T) -> Result<(), ConfigError>,
) -> Result<T, ConfigError> {
    let doc = DeTable::parse(text).map_err(|e| ConfigError::Syntax {
        origin: origin.to_owned(),
        line: e.span().map(|s| line_of(text, s.start)),
        message: e.message().trim_end().to_owned(),
    })?;
    let value = T::deserialize(toml::de::Deserializer::from(doc.clone())).map_err(|e| from_de_error(&e, text, doc.get_ref(), origin))?;
    validate(&value).map_err(|e| match e {
        ConfigError::Invalid { key, message, .. } => {
            ConfigError::Invalid { origin: Some(origin.to_owned()), line: line_of_key(text, doc.get_ref(), &key), key, message }
        }
        other => other,
    })?;
    Ok(value)
}

fn from_de_error(e: &toml::de::Error, text: &str, doc: &DeTable<'_>, origin: &str) -> ConfigError {
    let start = e.span().map(|s| s.start);
    let line = start.map(|start| line_of(text, start));
    let path = start.and_then(|start| key_path(doc, start)).unwrap_or_default();
    let message = e.message().trim_end();
    if let Some(rest) = message.strip_prefix("unknown field ") {
        // serde: "unknown field `x`, expected `a` or `b`" / "expected one of `a`, `b`, ..."
        let mut names = rest.split('`').skip(1).step_by(2).map(str::to_owned);
        if let Some(key) = names.next() {
            let section = path.len().saturating_sub(1);
            return ConfigError::UnknownKey {
                origin: origin.to_owned(),
                line,
                key,
                section: path[..section].join("."),
                expected: names.collect(),
            };
        }
    }
    ConfigError::BadValue {
        origin: origin.to_owned(),
        line,
        key: if path.is_empty() { "(top level)".to_owned() } else { path.join(".") },
        message: message.to_owned(),
    }
}

/// 1-based line of byte offset `pos`.
fn line_of(text: &str, pos: usize) -> usize {
    let pos = pos.min(text.len());
    1 + text.as_bytes()[..pos].iter().filter(|&&b| b == b'\n').count()
}

/// The dotted key path of the innermost key or value covering byte `pos`.
fn key_path(table: &DeTable<'_>, pos: usize) -> Option<Vec<String>> {
    let covers = |span: std::ops::Range<usize>| span.contains(&pos) || span.start == pos;
    for (key, value) in table {
        if let DeValue::Table(inner) = value.get_ref() {
            if let Some(mut path) = key_path(inner, pos) {
                path.insert(0, key.get_ref().to_string());
                return Some(path);
            }
        }
        if covers(key.span()) || covers(value.span()) {
            return Some(vec![key.get_ref().to_string()]);
        }
    }
    None
}

/// Line of the deepest existing key along the dotted `key` (e.g. the `[tls]`
/// header when `tls.cert` is absent).
fn line_of_key(text: &str, doc: &DeTable<'_>, key: &str) -> Option<usize> {
    let mut table = doc;
    let mut found: Option<&Spanned<_>> = None;
    for part in key.split('.') {
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref() == part) else {
            break;
        };
        found = Some(k);
        match v.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    found.map(|k| line_of(text, k.span().start))
}
