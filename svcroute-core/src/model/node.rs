//! The validated Node: its name and labels (used for topology).

use std::collections::BTreeMap;

use super::validate::{Ctx, MAX_LABEL};
use super::{ObjectKind, ValidationError, api};

/// Most labels svcroute accepts on one Node.
pub const MAX_LABELS: usize = 1_024;

/// A validated Node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
}

impl NodeInfo {
    /// Validates a Node as the API shapes it.
    pub fn from_api(node: &api::Node) -> Result<Self, ValidationError> {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let cx = Ctx::new(ObjectKind::Node, None, Some(name));
        cx.dns_subdomain("metadata.name", name)?;
        validate_labels(&cx, "metadata.labels", &node.metadata.labels)?;
        Ok(NodeInfo {
            name: name.to_string(),
            labels: node.metadata.labels.clone(),
        })
    }
}

/// Checks label keys and value lengths.
pub(crate) fn validate_labels(
    cx: &Ctx,
    field: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), ValidationError> {
    if labels.len() > MAX_LABELS {
        return Err(cx.err(
            field,
            super::Problem::TooMany {
                len: labels.len(),
                max: MAX_LABELS,
            },
        ));
    }
    for (k, v) in labels {
        let f = format!("{field}[{k}]");
        cx.label_key(&f, k)?;
        cx.short(&f, v, MAX_LABEL)?;
    }
    Ok(())
}
