//! Domain errors to gRPC statuses: the only place this mapping is made.

use tonic::Status;

use crate::features::ReadError;
use crate::log::LogError;
use crate::registry::RegistryError;
use crate::scoring::ScoreError;
use crate::store::StoreError;

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::BatchTooLarge { .. } => {
                Status::resource_exhausted(format!("events: {error}"))
            }
            StoreError::Log(LogError::WriterFailed | LogError::Stalled) => {
                Status::unavailable(error.to_string())
            }
            StoreError::Log(_) | StoreError::Lock(_) | StoreError::Task(_) => {
                Status::internal(error.to_string())
            }
        }
    }
}

impl From<ReadError> for Status {
    fn from(error: ReadError) -> Self {
        match &error {
            ReadError::UnknownEntityType(_) | ReadError::NoFeatures(_) => {
                Status::invalid_argument(format!("entity_type: {error}"))
            }
            ReadError::UnknownFeature { .. } => {
                Status::invalid_argument(format!("feature_names: {error}"))
            }
            ReadError::BadId(_) => Status::invalid_argument(format!("entity_id: {error}")),
            ReadError::TooOld { .. } | ReadError::TooOldForEntity { .. } => {
                Status::out_of_range(format!("as_of_ms: {error}"))
            }
        }
    }
}

impl From<RegistryError> for Status {
    fn from(error: RegistryError) -> Self {
        match &error {
            RegistryError::NotFound { .. } => Status::not_found(format!("model: {error}")),
            RegistryError::BadReference(_)
            | RegistryError::WrongKind { .. }
            | RegistryError::RetireWhich(_) => Status::invalid_argument(format!("model: {error}")),
            RegistryError::BadAlias(_)
            | RegistryError::AliasCrossesModels { .. }
            | RegistryError::TooManyAliases => Status::invalid_argument(format!("alias: {error}")),
            RegistryError::OutsideDir { .. } => Status::invalid_argument(format!("path: {error}")),
            // Not UNAVAILABLE: retrying does not help, an operator must set the alias.
            RegistryError::Unavailable { .. }
            | RegistryError::NotPromoted { .. }
            | RegistryError::Retire { .. } => {
                Status::failed_precondition(format!("model: {error}"))
            }
            RegistryError::Artifact(_)
            | RegistryError::Plan { .. }
            | RegistryError::NameMismatch { .. }
            | RegistryError::ChangedInPlace { .. } => {
                Status::failed_precondition(error.to_string())
            }
            RegistryError::Directory { .. } => Status::internal(error.to_string()),
        }
    }
}

impl From<ScoreError> for Status {
    fn from(error: ScoreError) -> Self {
        match error {
            ScoreError::Registry(error) => error.into(),
            ScoreError::Store(error) => error.into(),
            error @ (ScoreError::NonFinite { .. } | ScoreError::NonFiniteFeature { .. }) => {
                Status::internal(error.to_string())
            }
            ScoreError::Read(
                error @ (ReadError::TooOld { .. } | ReadError::TooOldForEntity { .. }),
            ) => Status::out_of_range(format!("event.event_time_ms: {error}")),
            ScoreError::Read(error) => Status::invalid_argument(format!("event: {error}")),
            ScoreError::Refused(refusal) => {
                Status::invalid_argument(format!("event.{}: {}", refusal.field, refusal.reason))
            }
            error @ (ScoreError::RecordWithoutId | ScoreError::Invalid { .. }) => {
                Status::invalid_argument(error.to_string())
            }
            // Not retryable: the same call would be refused again.
            error @ ScoreError::RepeatForgotten { .. } => Status::already_exists(error.to_string()),
        }
    }
}

impl From<crate::inference::InferError> for Status {
    fn from(error: crate::inference::InferError) -> Self {
        use crate::inference::InferError;
        match error {
            InferError::Registry(error) => error.into(),
            error @ InferError::Unservable { .. } => Status::failed_precondition(error.to_string()),
            error @ (InferError::Tensor { .. } | InferError::Request(_)) => {
                Status::invalid_argument(error.to_string())
            }
        }
    }
}

#[cfg(feature = "cluster")]
impl From<crate::online::ScorerError> for Status {
    fn from(error: crate::online::ScorerError) -> Self {
        use crate::online::{OnlineError, ScorerError};
        match error {
            ScorerError::Score(error) => error.into(),
            ScorerError::Read(error) => error.into(),
            error @ ScorerError::Record => Status::failed_precondition(error.to_string()),
            error @ (ScorerError::Unrecorded { .. } | ScorerError::Behind { .. }) => {
                Status::unavailable(error.to_string())
            }
            // Fails closed and says so: no answer without the entities' state.
            ScorerError::Online(error @ OnlineError::Redis { .. }) => {
                Status::unavailable(error.to_string())
            }
            ScorerError::Online(error) => Status::internal(error.to_string()),
        }
    }
}
