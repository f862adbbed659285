//! Where the shim's settings come from: the skerry config file (containerd's
//! runtime `options.ConfigPath`, else `SKERRY_CONFIG`, else the default
//! path) and the state root (`SKERRY_SHIM_ROOT`, default `/run/skerry-shim`,
//! one directory per containerd namespace).

use std::path::PathBuf;

use containerd_shim::protos::protobuf::{well_known_types::any::Any, CodedInputStream};
use skerry_runtime::config::{Config, DEFAULT_CONFIG_PATH};

use crate::error::TaskError;

/// Default root of the shim's state stores.
pub const DEFAULT_STATE_ROOT: &str = "/run/skerry-shim";

/// Message name of the options CRI sends for non-runc runtimes.
const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";

/// The state store directory for containerd namespace `namespace`.
pub fn state_root(namespace: &str) -> PathBuf {
    std::env::var_os("SKERRY_SHIM_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_ROOT))
        .join(namespace)
}

/// Loads the config file named by the task's runtime options, or by
/// `SKERRY_CONFIG`, or the default one (all defaults if it is missing).
pub fn load_config(options: Option<&Any>) -> Result<Config, TaskError> {
    let named = match options.filter(|o| o.type_url.rsplit('/').next() == Some(RUNTIME_OPTIONS)) {
        Some(any) => config_path(&any.value)?,
        None => None,
    };
    let named = named.or_else(|| std::env::var_os("SKERRY_CONFIG").map(PathBuf::from));
    Ok(match named {
        Some(path) => Config::load(&path, true)?,
        None => Config::load(DEFAULT_CONFIG_PATH.as_ref(), false)?,
    })
}

/// `config_path` (field 2) of an encoded `runtimeoptions.v1.Options`.
fn config_path(bytes: &[u8]) -> Result<Option<PathBuf>, TaskError> {
    let bad = |e: containerd_shim::protos::protobuf::Error| {
        TaskError::InvalidArgument(format!("options: invalid {RUNTIME_OPTIONS}: {e}"))
    };
    let mut input = CodedInputStream::from_bytes(bytes);
    let mut path = None;
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(bad)? {
        if tag == (2 << 3) | 2 {
            path = Some(PathBuf::from(input.read_string().map_err(bad)?));
        } else {
            input
                .skip_field(
                    containerd_shim::protos::protobuf::rt::WireType::new(tag & 7).ok_or_else(
                        || {
                            TaskError::InvalidArgument(format!(
                                "options: invalid {RUNTIME_OPTIONS}"
                            ))
                        },
                    )?,
                )
                .map_err(bad)?;
        }
    }
    Ok(path.filter(|p| !p.as_os_str().is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_path_is_read_from_runtime_options() {
        // runtimeoptions.v1.Options{type_url: "x", config_path: "/etc/s.toml"}
        let mut bytes = vec![0x0a, 1, b'x', 0x12, 11];
        bytes.extend_from_slice(b"/etc/s.toml");
        assert_eq!(
            config_path(&bytes).unwrap(),
            Some(PathBuf::from("/etc/s.toml"))
        );
        assert_eq!(config_path(&[0x0a, 1, b'x']).unwrap(), None);
        let err = config_path(&[0x12, 9, b'/']).unwrap_err().to_string();
        assert!(
            err.starts_with("options: invalid runtimeoptions.v1.Options"),
            "{err}"
        );
    }

    #[test]
    fn named_config_file_must_exist() {
        let any = Any {
            type_url: format!("types.containerd.io/{RUNTIME_OPTIONS}"),
            value: [&[0x12u8, 13][..], b"/nonexistent/"].concat(),
            ..Default::default()
        };
        let err = load_config(Some(&any)).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/"), "{err}");
    }
}
