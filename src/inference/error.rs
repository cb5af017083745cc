//! What can be wrong with an inference request, in the protocol's terms: the tensor
//! named, the row where one row is at fault.

use crate::registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// A tensor of the request is malformed or not what the model takes.
    #[error("{tensor}: {reason}")]
    Tensor { tensor: String, reason: String },
    /// The request as a whole (no tensor to blame).
    #[error("{0}")]
    Request(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The model cannot be served over this protocol (it does not say what it reads).
    #[error("model {model}: {reason}")]
    Unservable { model: String, reason: String },
}

impl InferError {
    pub fn tensor(tensor: impl Into<String>, reason: impl Into<String>) -> InferError {
        InferError::Tensor {
            tensor: tensor.into(),
            reason: reason.into(),
        }
    }
}
