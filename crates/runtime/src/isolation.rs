//! Which isolation a new container gets: `[runtime] isolation` of the config
//! in force (the default, or the file a RuntimeClass points its runtime at),
//! or the bundle's `io.skerry.isolation` annotation where the config allows it.

use std::collections::HashMap;

use crate::config::{Isolation, RuntimeConfig};

/// The annotation that asks for an isolation.
pub const ANNOTATION: &str = "io.skerry.isolation";

/// An isolation annotation that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsolationError {
    /// The value is neither `vm` nor `container`.
    #[error("annotation {ANNOTATION}={value:?}: expected \"vm\" or \"container\"")]
    Unknown {
        /// The value given.
        value: String,
    },
    /// The annotation asks for another isolation than the config's and the
    /// config does not let annotations choose.
    #[error(
        "annotation {ANNOTATION}={asked}: asks for {strength} isolation than the configured \
         {configured:?}, and runtime.allow_isolation_annotation is false"
    )]
    NotAllowed {
        /// What the annotation asks for.
        asked: Isolation,
        /// `runtime.isolation`.
        configured: &'static str,
        /// "weaker" or "stronger".
        strength: &'static str,
    },
}

/// The isolation of a container with `annotations`:
///
/// - no `io.skerry.isolation` annotation: `runtime.isolation`;
/// - an annotation whose value is not `vm` or `container`: an error;
/// - `runtime.allow_isolation_annotation = true`: the annotation's value;
/// - otherwise an annotation equal to `runtime.isolation` is accepted and any
///   other is refused, whether it asks for weaker or stronger isolation: a
///   container never silently runs with another isolation than it asked for.
pub fn resolve(
    config: &RuntimeConfig,
    annotations: Option<&HashMap<String, String>>,
) -> Result<Isolation, IsolationError> {
    let Some(value) = annotations.and_then(|a| a.get(ANNOTATION)) else {
        return Ok(config.isolation);
    };
    let asked = match value.as_str() {
        "vm" => Isolation::Vm,
        "container" => Isolation::Container,
        _ => {
            return Err(IsolationError::Unknown {
                value: value.clone(),
            })
        }
    };
    if config.allow_isolation_annotation || asked == config.isolation {
        return Ok(asked);
    }
    Err(IsolationError::NotAllowed {
        asked,
        configured: config.isolation.name(),
        strength: match asked {
            Isolation::Container => "weaker",
            Isolation::Vm => "stronger",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(isolation: Isolation, allow: bool) -> RuntimeConfig {
        RuntimeConfig {
            isolation,
            allow_isolation_annotation: allow,
        }
    }

    fn annotated(value: &str) -> HashMap<String, String> {
        HashMap::from([(ANNOTATION.to_string(), value.to_string())])
    }

    #[test]
    fn without_the_annotation_the_config_decides() {
        for isolation in [Isolation::Vm, Isolation::Container] {
            for allow in [false, true] {
                let c = config(isolation, allow);
                assert_eq!(resolve(&c, None), Ok(isolation));
                let other = HashMap::from([("x".to_string(), "container".to_string())]);
                assert_eq!(resolve(&c, Some(&other)), Ok(isolation));
            }
        }
    }

    #[test]
    fn an_allowed_annotation_chooses() {
        let c = config(Isolation::Vm, true);
        assert_eq!(
            resolve(&c, Some(&annotated("container"))),
            Ok(Isolation::Container)
        );
        let c = config(Isolation::Container, true);
        assert_eq!(resolve(&c, Some(&annotated("vm"))), Ok(Isolation::Vm));
    }

    #[test]
    fn a_disallowed_annotation_is_refused_unless_it_agrees() {
        let c = config(Isolation::Vm, false);
        assert_eq!(resolve(&c, Some(&annotated("vm"))), Ok(Isolation::Vm));
        assert_eq!(
            resolve(&c, Some(&annotated("container")))
                .unwrap_err()
                .to_string(),
            "annotation io.skerry.isolation=container: asks for weaker isolation than the \
             configured \"vm\", and runtime.allow_isolation_annotation is false"
        );
        let c = config(Isolation::Container, false);
        assert_eq!(
            resolve(&c, Some(&annotated("vm"))).unwrap_err().to_string(),
            "annotation io.skerry.isolation=vm: asks for stronger isolation than the \
             configured \"container\", and runtime.allow_isolation_annotation is false"
        );
    }

    #[test]
    fn an_unknown_value_is_named_even_when_allowed() {
        for allow in [false, true] {
            let err = resolve(&config(Isolation::Vm, allow), Some(&annotated("gvisor")))
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                "annotation io.skerry.isolation=\"gvisor\": expected \"vm\" or \"container\""
            );
        }
    }
}
