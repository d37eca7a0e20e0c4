//! Errors of the model crate: bad configurations and unusable checkpoint state.

use thiserror::Error;

/// What can go wrong when building, saving or loading a model.
///
/// Callers branch on the variant: a bad configuration is an operator error (exit code 2 in
/// the daemon), a state that does not decode means a corrupt or incompatible checkpoint.
#[derive(Debug, Error)]
pub enum ModelError {
    /// The size name is not one of the presets.
    #[error("unknown model size `{0}` (expected tiny, small, base or large)")]
    UnknownSize(String),
    /// The configuration is internally inconsistent (which field, and why).
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    /// The configuration JSON does not parse or has unknown fields.
    #[error("model configuration JSON: {0}")]
    ConfigJson(#[from] serde_json::Error),
    /// Model or optimizer bytes do not decode into this configuration's model.
    #[error("checkpoint state does not decode: {0}")]
    State(String),
    /// The architecture cannot do what was asked (ViLBERT has no generation head).
    #[error("{0}")]
    Unsupported(String),
    /// An input cannot be used (an image the model cannot read, an empty prompt).
    #[error("unusable input: {0}")]
    Input(String),
}
