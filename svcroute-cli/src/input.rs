//! Loading Kubernetes objects as `kubectl get ... -o yaml|json` prints them.
//!
//! A source is a file, a directory (its `*.yaml`, `*.yml` and `*.json`, in name order) or stdin
//! (`-`). Its text is YAML (one or more documents) or JSON (one value or a stream of values).
//! Every document is flattened: `List` objects (`kind: List`, `ServiceList`, ...) and JSON
//! arrays yield their items, and each object is dispatched on its `kind`. Services,
//! EndpointSlices (`discovery.k8s.io/v1`) and Nodes are decoded into the core's API types;
//! anything else is skipped with a warning. An object that cannot be decoded is a
//! [`Problem::Rejected`]: the rest still loads.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;
use svcroute_core::model::api;

use crate::error::CliError;

/// Where an object came from, for messages: `file`, `file: document 2`, `...: item 3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file, or `<stdin>`.
    pub source: String,
    /// 1-based document (or JSON value) number, when the source holds several.
    pub document: Option<usize>,
    /// 1-based positions inside (nested) Lists.
    pub items: Vec<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)?;
        if let Some(d) = self.document {
            write!(f, ": document {d}")?;
        }
        for i in &self.items {
            write!(f, ": item {i}")?;
        }
        Ok(())
    }
}

/// An object svcroute routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// A `v1/Service`.
    Service(Box<api::Service>),
    /// A `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice(Box<api::EndpointSlice>),
    /// A `v1/Node`.
    Node(Box<api::Node>),
}

/// Something wrong with one object or document that does not stop loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Skipped on purpose (another kind, another API version, not an object): a warning.
    Skipped(String),
    /// A Service, EndpointSlice or Node that cannot be decoded: an error, counted by `--strict`.
    Rejected(String),
}

/// One thing read from the sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// An object to route, with where it came from.
    Object(Origin, Object),
    /// A warning or a rejected object.
    Problem(Problem),
}

/// Everything read from the sources, in input order (so messages come out in that order).
#[derive(Debug, Default)]
pub struct Loaded {
    /// Objects and problems, in input order.
    pub entries: Vec<Entry>,
}

impl Loaded {
    fn problem(&mut self, p: Problem) {
        self.entries.push(Entry::Problem(p));
    }

    /// The objects read.
    #[cfg(test)]
    fn objects(&self) -> Vec<&Object> {
        self.entries
            .iter()
            .filter_map(|e| match e {
                Entry::Object(_, o) => Some(o),
                Entry::Problem(_) => None,
            })
            .collect()
    }

    /// The problems found.
    #[cfg(test)]
    fn problems(&self) -> Vec<&Problem> {
        self.entries
            .iter()
            .filter_map(|e| match e {
                Entry::Problem(p) => Some(p),
                Entry::Object(..) => None,
            })
            .collect()
    }
}

/// Reads a file, or stdin for `-`.
pub fn read_source(path: &Path) -> Result<String, CliError> {
    let name = display_name(path);
    let read_err = |source| CliError::Read {
        path: name.clone(),
        source,
    };
    let bytes = if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).map_err(read_err)?;
        buf
    } else {
        fs::read(path).map_err(read_err)?
    };
    String::from_utf8(bytes).map_err(|_| CliError::Parse {
        path: name.clone(),
        document: None,
        message: "not UTF-8 text".to_string(),
    })
}

/// How a source is named in messages.
pub fn display_name(path: &Path) -> String {
    if path.as_os_str() == "-" {
        "<stdin>".to_string()
    } else {
        path.display().to_string()
    }
}

/// Reads every source (`-f` values, in order). Stdin may be given once.
pub fn load(paths: &[PathBuf]) -> Result<Loaded, CliError> {
    if paths.iter().filter(|p| p.as_os_str() == "-").count() > 1 {
        return Err(CliError::Usage(
            "`-f -` (stdin) given more than once".into(),
        ));
    }
    let mut loaded = Loaded::default();
    for path in paths {
        for file in expand(path)? {
            let text = read_source(&file)?;
            let docs = parse_documents(&display_name(&file), &text, is_json_name(&file))?;
            let several = docs.len() > 1;
            for (i, doc) in docs.into_iter().enumerate() {
                let origin = Origin {
                    source: display_name(&file),
                    document: several.then_some(i + 1),
                    items: Vec::new(),
                };
                collect(doc, origin, None, &mut loaded);
            }
        }
    }
    Ok(loaded)
}

/// A file stays itself; a directory yields its YAML and JSON files in name order.
fn expand(path: &Path) -> Result<Vec<PathBuf>, CliError> {
    if path.as_os_str() == "-" || !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let read_err = |source| CliError::Read {
        path: path.display().to_string(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(path).map_err(read_err)? {
        let p = entry.map_err(read_err)?.path();
        let wanted = p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"));
        if wanted && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

fn is_json_name(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "json")
}

/// Parses a source's text into its documents. JSON (a `.json` file, or text starting with `{`
/// or `[`) is read as a stream of values; everything else as multi-document YAML.
pub fn parse_documents(name: &str, text: &str, json_name: bool) -> Result<Vec<Value>, CliError> {
    let looks_json = text.trim_start().starts_with(['{', '[']);
    if json_name || looks_json {
        match parse_json_stream(text) {
            Ok(docs) => return Ok(docs),
            // `{a: 1}` is YAML too; only a `.json` file must be strict JSON.
            Err((doc, e)) if json_name || parse_yaml(name, text).is_err() => {
                return Err(CliError::Parse {
                    path: name.to_string(),
                    document: (doc > 1).then_some(doc),
                    message: e.to_string(),
                });
            }
            Err(_) => {}
        }
    }
    parse_yaml(name, text)
}

/// A stream of JSON values; on error, the 1-based value that failed and why.
fn parse_json_stream(text: &str) -> Result<Vec<Value>, (usize, serde_json::Error)> {
    let mut docs = Vec::new();
    for (i, value) in serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .enumerate()
    {
        docs.push(value.map_err(|e| (i + 1, e))?);
    }
    Ok(docs)
}

fn parse_yaml(name: &str, text: &str) -> Result<Vec<Value>, CliError> {
    serde_saphyr::from_multiple::<Value>(text).map_err(|e| CliError::Parse {
        path: name.to_string(),
        document: failing_yaml_document(text),
        message: one_line(&e.to_string()),
    })
}

/// Finds which `---`-separated document of `text` fails to parse on its own (1-based), so an
/// error in a long multi-document file can be located even when the parser only gives a line.
fn failing_yaml_document(text: &str) -> Option<usize> {
    let mut chunks = vec![String::new()];
    for line in text.lines() {
        let is_separator = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_separator {
            chunks.push(String::new());
        }
        if let Some(last) = chunks.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    // Documents holding only comments are skipped by the parser, so they are not counted.
    let has_content = |chunk: &String| {
        chunk.lines().any(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with('#') && l != "---" && l != "..."
        })
    };
    let chunks: Vec<&String> = chunks.iter().filter(|c| has_content(c)).collect();
    if chunks.len() < 2 {
        return None;
    }
    chunks
        .iter()
        .position(|c| serde_saphyr::from_multiple::<Value>(c).is_err())
        .map(|i| i + 1)
}

/// The first line of a parser message (the YAML parser adds a source snippet below it),
/// without its own `error: ` prefix.
fn one_line(s: &str) -> String {
    let first = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

/// Flattens one document or List item into `loaded`. `item_kind` is the kind implied by an
/// enclosing typed List (`ServiceList` items often carry no `kind`).
fn collect(value: Value, origin: Origin, item_kind: Option<&str>, loaded: &mut Loaded) {
    let map = match value {
        Value::Array(items) => {
            for (i, item) in items.into_iter().enumerate() {
                collect(item, origin.nested(i + 1), item_kind, loaded);
            }
            return;
        }
        Value::Object(map) => map,
        Value::Null => return,
        other => {
            loaded.problem(Problem::Skipped(format!(
                "{origin}: skipping a {} (expected a Kubernetes object)",
                json_type(&other)
            )));
            return;
        }
    };
    let kind = map
        .get("kind")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| item_kind.map(str::to_string))
        .unwrap_or_default();
    let api_version = map
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let name = object_name(&map);
    let value = Value::Object(map);

    if kind == "List" || kind.ends_with("List") {
        let inner = kind
            .strip_suffix("List")
            .filter(|k| !k.is_empty())
            .map(str::to_string);
        match value.get("items") {
            Some(Value::Array(_)) | None => {}
            Some(_) => {
                loaded.problem(Problem::Skipped(format!(
                    "{origin}: {kind} whose items are not a list"
                )));
                return;
            }
        }
        if let Value::Object(mut map) = value
            && let Some(Value::Array(items)) = map.remove("items")
        {
            for (i, item) in items.into_iter().enumerate() {
                collect(item, origin.nested(i + 1), inner.as_deref(), loaded);
            }
        }
        return;
    }

    let skip = |loaded: &mut Loaded, why: &str| {
        loaded.problem(Problem::Skipped(format!("{origin}: skipping {why}")));
    };
    let group_ok = |expected: &str| api_version.is_empty() || api_version == expected;
    match kind.as_str() {
        "Service" if group_ok("v1") => {
            decode(value, &kind, &name, &origin, Object::Service, loaded)
        }
        "EndpointSlice" if group_ok("discovery.k8s.io/v1") => {
            decode(value, &kind, &name, &origin, Object::EndpointSlice, loaded);
        }
        "Node" if group_ok("v1") => decode(value, &kind, &name, &origin, Object::Node, loaded),
        "Service" | "EndpointSlice" | "Node" => skip(
            loaded,
            &format!("{kind} {name}: unsupported apiVersion {api_version:?}"),
        ),
        "" => skip(loaded, "an object without kind"),
        "Endpoints" => skip(
            loaded,
            &format!("Endpoints {name} (svcroute reads EndpointSlices, not Endpoints)"),
        ),
        _ => skip(
            loaded,
            &format!("{kind} {name} (svcroute reads Service, EndpointSlice and Node)"),
        ),
    }
}

/// Decodes an object of a routed kind, or records why it cannot be.
fn decode<T: DeserializeOwned>(
    value: Value,
    kind: &str,
    name: &str,
    origin: &Origin,
    wrap: fn(Box<T>) -> Object,
    loaded: &mut Loaded,
) {
    match serde_json::from_value::<T>(value) {
        Ok(obj) => loaded
            .entries
            .push(Entry::Object(origin.clone(), wrap(Box::new(obj)))),
        Err(e) => loaded.problem(Problem::Rejected(format!(
            "{kind} {name}: cannot decode ({origin}): {e}"
        ))),
    }
}

impl Origin {
    fn nested(&self, item: usize) -> Origin {
        let mut o = self.clone();
        o.items.push(item);
        o
    }
}

/// `namespace/name` as core names objects (`name` for cluster-scoped Nodes, `?` if unnamed).
fn object_name(map: &serde_json::Map<String, Value>) -> String {
    let meta = map.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
    let name = field("name").filter(|n| !n.is_empty()).unwrap_or("?");
    let namespaced = !matches!(map.get("kind").and_then(Value::as_str), Some("Node"));
    match field("namespace") {
        Some(ns) => format!("{ns}/{name}"),
        None if namespaced => format!("default/{name}"),
        None => name.to_string(),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, json: bool) -> Loaded {
        let mut loaded = Loaded::default();
        let docs = parse_documents("t", text, json).unwrap();
        let several = docs.len() > 1;
        for (i, d) in docs.into_iter().enumerate() {
            let origin = Origin {
                source: "t".into(),
                document: several.then_some(i + 1),
                items: Vec::new(),
            };
            collect(d, origin, None, &mut loaded);
        }
        loaded
    }

    #[test]
    fn typed_lists_give_their_items_a_kind() {
        let l = load_text(
            r#"{"kind": "ServiceList", "apiVersion": "v1", "items": [{"metadata": {"name": "a"}}]}"#,
            true,
        );
        assert!(matches!(l.objects().as_slice(), [Object::Service(_)]));
    }

    #[test]
    fn multi_doc_yaml_lists_and_skips() {
        let l = load_text(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Node\n  metadata: {name: n1}\n\
             - apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: d}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s}\naddressType: IPv4\nendpoints: null\n",
            false,
        );
        assert_eq!(l.objects().len(), 2);
        assert_eq!(l.problems().len(), 1);
        let Problem::Skipped(w) = l.problems()[0] else {
            panic!()
        };
        assert!(
            w.contains("document 1: item 2") && w.contains("Deployment default/d"),
            "{w}"
        );
    }

    #[test]
    fn undecodable_objects_are_rejected_not_fatal() {
        let l = load_text(
            "kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: eighty}]}\n",
            false,
        );
        assert!(l.objects().is_empty());
        assert!(
            matches!(l.problems()[0], Problem::Rejected(m) if m.starts_with("Service default/a: cannot decode"))
        );
    }

    #[test]
    fn parse_errors_name_the_document() {
        let err =
            parse_documents("f.yaml", "kind: Node\n---\nkind: [unclosed\n", false).unwrap_err();
        let CliError::Parse { document, .. } = err else {
            panic!()
        };
        assert_eq!(document, Some(2));
        let err = parse_documents("f.json", "{\"kind\": \"Node\"} {\"kind\": ", true).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("f.json: document 2: cannot parse"),
            "{err}"
        );
    }
}
