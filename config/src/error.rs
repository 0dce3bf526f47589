//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while reading or checking a configuration.
///
/// Messages say where (origin, 1-based line when known, and key) and what to
/// do about it, so the server can print them as they are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file is missing, unreadable or not UTF-8.
    #[error("cannot read config file {}: {source} (check the path and its permissions)", .path.display())]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// The text is not valid TOML.
    #[error("{}invalid TOML: {message}", at(.origin, *.line))]
    Syntax {
        /// The file name, or the origin given to `from_toml_str`.
        origin: String,
        /// 1-based line of the problem, when known.
        line: Option<usize>,
        /// What the TOML parser said.
        message: String,
    },

    /// A key (or section) that the schema does not know, usually a typo.
    #[error(
        "{}unknown key `{key}`{} (expected one of: {})",
        at(.origin, *.line),
        in_section(.section),
        .expected.join(", ")
    )]
    UnknownKey {
        /// The file name, or the origin given to `from_toml_str`.
        origin: String,
        /// 1-based line of the unknown key, when known.
        line: Option<usize>,
        /// The unknown key as written.
        key: String,
        /// The section it appeared in (`"server"`), empty at the top level.
        section: String,
        /// The keys that are accepted there.
        expected: Vec<String>,
    },

    /// A value of the wrong type, or not one of the accepted values.
    #[error("{}bad value for `{key}`: {message}", at(.origin, *.line))]
    BadValue {
        /// The file name, or the origin given to `from_toml_str`.
        origin: String,
        /// 1-based line of the value, when known.
        line: Option<usize>,
        /// Dotted path of the key, e.g. `evaluator.backend`.
        key: String,
        /// What is wrong and what was expected.
        message: String,
    },

    /// The configuration parsed, but a value is out of range or the settings
    /// contradict each other (found by `validate`).
    #[error("{}{key}: {message}", at_opt(.origin.as_deref(), *.line))]
    Invalid {
        /// The file name or origin, when the configuration came from text.
        origin: Option<String>,
        /// 1-based line of the offending key, when known.
        line: Option<usize>,
        /// Dotted path of the offending key or section, e.g. `server.listen`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// A listen or connect address is not `SCHEME://HOST:PORT` or `HOST:PORT`.
    #[error("invalid address `{address}`: {reason}")]
    InvalidAddress {
        /// The address as written.
        address: String,
        /// What is wrong with it and how to write it.
        reason: String,
    },
}

impl ConfigError {
    /// A validation error for `key`, without location (filled in by the loader).
    pub(crate) fn invalid(key: &str, message: impl Into<String>) -> Self {
        Self::Invalid { origin: None, line: None, key: key.to_owned(), message: message.into() }
    }
}

fn at(origin: &str, line: Option<usize>) -> String {
    at_opt(Some(origin), line)
}

fn at_opt(origin: Option<&str>, line: Option<usize>) -> String {
    match (origin, line) {
        (Some(origin), Some(line)) => format!("{origin}:{line}: "),
        (Some(origin), None) => format!("{origin}: "),
        (None, Some(line)) => format!("line {line}: "),
        (None, None) => String::new(),
    }
}

fn in_section(section: &str) -> String {
    if section.is_empty() {
        String::new()
    } else {
        format!(" in [{section}]")
    }
}
