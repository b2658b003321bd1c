//! "Is identity X scheduled on node N?" — the node-binding half of issuance.
//!
//! The control component implements [`WorkloadDirectory`] from its Pod informer; local mode
//! uses [`FileDirectory`], a YAML file of nodes and the service accounts running on each, which
//! is re-read when it changes (an invalid edit is logged and the last good content kept).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Deserialize;
use ward_lib_identity::spiffe_id::{is_dns1123_label, is_dns1123_subdomain};

use crate::BoxFuture;

/// Why the directory could not answer. Not the requester's fault: the CA answers "unavailable".
#[derive(Debug, Clone, thiserror::Error)]
pub enum DirectoryError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("workload directory unavailable: {0}")]
    Unavailable(String),
}

pub trait WorkloadDirectory: Send + Sync + 'static {
    /// Whether the node is known (declared in local mode; a Node object in Kubernetes mode).
    fn has_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<bool, DirectoryError>>;

    /// Whether a workload running as `namespace/service_account` is scheduled on `node`.
    fn is_scheduled<'a>(
        &'a self,
        node: &'a str,
        namespace: &'a str,
        service_account: &'a str,
    ) -> BoxFuture<'a, Result<bool, DirectoryError>>;
}

/// The YAML form of the local node directory.
///
/// ```yaml
/// nodes:
///   - name: node-1
///     workloads:
///       - namespace: default
///         serviceAccount: web
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesFile {
    pub nodes: Vec<NodeEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub name: String,
    #[serde(default)]
    pub workloads: Vec<WorkloadEntry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadEntry {
    pub namespace: String,
    pub service_account: String,
}

/// node → set of (namespace, service account).
type Index = BTreeMap<String, BTreeSet<(String, String)>>;

/// Parses and validates a nodes file; errors name the entry.
pub fn parse_nodes(text: &str) -> Result<Index, String> {
    let file: NodesFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let mut index = Index::new();
    for (i, node) in file.nodes.iter().enumerate() {
        if !is_dns1123_subdomain(&node.name) {
            return Err(format!(
                "nodes[{i}].name: {:?} is not a valid node name",
                node.name
            ));
        }
        let set = index.entry(node.name.clone()).or_default();
        for (j, w) in node.workloads.iter().enumerate() {
            if !is_dns1123_label(&w.namespace) {
                return Err(format!(
                    "nodes[{i}].workloads[{j}].namespace: {:?} is not a valid namespace",
                    w.namespace
                ));
            }
            if !is_dns1123_subdomain(&w.service_account) {
                return Err(format!(
                    "nodes[{i}].workloads[{j}].serviceAccount: {:?} is not a valid service account",
                    w.service_account
                ));
            }
            set.insert((w.namespace.clone(), w.service_account.clone()));
        }
    }
    Ok(index)
}

/// A [`WorkloadDirectory`] backed by a YAML file, re-read when its modification time changes.
#[derive(Debug)]
pub struct FileDirectory {
    path: PathBuf,
    state: Mutex<(Option<SystemTime>, Arc<Index>)>,
}

impl FileDirectory {
    /// Loads the file; fails if the initial content is invalid.
    pub fn load(path: &Path) -> Result<Self, DirectoryError> {
        let file_err = |reason: String| DirectoryError::File {
            path: path.display().to_string(),
            reason,
        };
        let mtime = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map_err(|e| file_err(e.to_string()))?;
        let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
        let index = parse_nodes(&text).map_err(file_err)?;
        Ok(Self {
            path: path.to_owned(),
            state: Mutex::new((Some(mtime), Arc::new(index))),
        })
    }

    /// Re-reads the file if it changed; keeps the last good index on error.
    fn current(&self) -> Arc<Index> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if mtime.is_some() && mtime != state.0 {
            state.0 = mtime;
            match std::fs::read_to_string(&self.path)
                .map_err(|e| e.to_string())
                .and_then(|t| parse_nodes(&t))
            {
                Ok(index) => {
                    tracing::info!(path = %self.path.display(), "node directory reloaded");
                    state.1 = Arc::new(index);
                }
                Err(reason) => tracing::error!(
                    path = %self.path.display(),
                    %reason,
                    "node directory update rejected; keeping the last good content"
                ),
            }
        }
        state.1.clone()
    }
}

impl WorkloadDirectory for FileDirectory {
    fn has_node<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<bool, DirectoryError>> {
        Box::pin(async move { Ok(self.current().contains_key(node)) })
    }

    fn is_scheduled<'a>(
        &'a self,
        node: &'a str,
        namespace: &'a str,
        service_account: &'a str,
    ) -> BoxFuture<'a, Result<bool, DirectoryError>> {
        Box::pin(async move {
            Ok(self.current().get(node).is_some_and(|set| {
                set.contains(&(namespace.to_owned(), service_account.to_owned()))
            }))
        })
    }
}
