//! The `Features` service: read one entity's feature values.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Backend;
use super::pb::{self, features_server::Features};
use crate::store::FeatureStore;

pub struct FeaturesService {
    backend: Backend,
}

impl FeaturesService {
    pub fn new(store: Arc<FeatureStore>) -> FeaturesService {
        FeaturesService::on(Backend::Embedded(store))
    }

    /// Reads from `backend`: this process's store, or a scorer's online store.
    pub fn on(backend: Backend) -> FeaturesService {
        FeaturesService { backend }
    }
}

#[tonic::async_trait]
impl Features for FeaturesService {
    async fn get_features(
        &self,
        request: Request<pb::GetFeaturesRequest>,
    ) -> Result<Response<pb::GetFeaturesResponse>, Status> {
        let request = request.into_inner();
        if let Some(as_of) = request.as_of_ms
            && as_of <= 0
        {
            return Err(Status::invalid_argument(
                "as_of_ms: must be a positive time in ms since the Unix epoch",
            ));
        }
        let features = match &self.backend {
            Backend::Embedded(store) => store.read(
                &request.entity_type,
                &request.entity_id,
                &request.feature_names,
                request.as_of_ms,
            )?,
            #[cfg(feature = "cluster")]
            Backend::Online(scorer) => {
                scorer
                    .read(
                        &request.entity_type,
                        &request.entity_id,
                        &request.feature_names,
                        request.as_of_ms,
                    )
                    .await?
            }
        };
        Ok(Response::new(features.into()))
    }
}
