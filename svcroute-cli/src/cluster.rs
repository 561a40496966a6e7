//! Feeding loaded objects into the core [`State`], reporting every rejected one.

use std::io::Write;

use svcroute_core::State;
use svcroute_core::model::ProxyConfig;
use svcroute_core::watch::Event;

use crate::error::CliError;
use crate::input::{Entry, Loaded, Object, Problem};

/// The state built from the input, and how many objects were rejected.
pub struct Cluster {
    /// The resolved state (`take_changes` already called, so `desired()` is complete).
    pub state: State,
    /// Objects that could not be decoded or failed validation.
    pub rejected: usize,
}

/// Applies every loaded object as `Event::Apply`, in input order. Warnings and errors go to
/// `diag`, one line each (`warning: ...`, `error: Service ns/name: field: problem`).
pub fn build(
    config: ProxyConfig,
    loaded: Loaded,
    diag: &mut dyn Write,
) -> Result<Cluster, CliError> {
    let mut state = State::new(config).map_err(|error| CliError::Settings {
        hint: "the node settings".to_string(),
        error: Box::new(error),
    })?;
    let mut rejected = 0;
    // Diagnostics are best effort: a closed stderr must not stop the routing.
    if !loaded
        .entries
        .iter()
        .any(|e| matches!(e, Entry::Object(..) | Entry::Problem(Problem::Rejected(_))))
    {
        let _ = writeln!(
            diag,
            "warning: the input holds no Service, EndpointSlice or Node"
        );
    }
    for entry in loaded.entries {
        let object = match entry {
            Entry::Problem(Problem::Skipped(m)) => {
                let _ = writeln!(diag, "warning: {m}");
                continue;
            }
            Entry::Problem(Problem::Rejected(m)) => {
                rejected += 1;
                let _ = writeln!(diag, "error: {m}");
                continue;
            }
            Entry::Object(_origin, object) => object,
        };
        let result = match object {
            Object::Service(s) => state.apply(Event::Apply(*s)),
            Object::EndpointSlice(s) => state.apply(Event::Apply(*s)),
            Object::Node(n) => state.apply(Event::Apply(*n)),
        };
        if let Err(e) = result {
            rejected += 1;
            let _ = writeln!(diag, "error: {e}");
        }
    }
    state.take_changes();
    Ok(Cluster { state, rejected })
}
