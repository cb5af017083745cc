//! Domain errors to gRPC statuses: the only place this mapping is made.

use tonic::Status;

use crate::features::ReadError;
use crate::log::LogError;
use crate::store::StoreError;

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::BatchTooLarge { .. } => {
                Status::resource_exhausted(format!("events: {error}"))
            }
            StoreError::Log(LogError::WriterFailed) => Status::unavailable(error.to_string()),
            StoreError::Log(_) => Status::internal(error.to_string()),
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
        }
    }
}
