//! The controller: reconciles each McpPolicy into the ConfigMap its sidecars read, an isolating
//! NetworkPolicy, and a status. What it writes is computed by the pure functions of [`render`];
//! the Kubernetes I/O around them stays thin.

pub mod render;

#[cfg(test)]
mod tests;
