//! Who is calling, and may they: one tower layer in front of every service. A caller is
//! named by a bearer token (`authorization: Bearer <token>`; only its SHA-256 is kept)
//! or by its TLS client certificate (SHA-256 of the certificate), and holds roles.
//! Health and reflection are open to all, so load balancers and tools can probe;
//! everything else needs a role: Ingest `ingest`, Score/ScoreCandidates/Recommend `score`,
//! GetFeatures/ListModels/GetModel `read`, LoadModel/SetAlias/RetireModel `admin`, and unknown
//! methods at least a known caller. With no callers configured the layer lets every
//! call through as `anonymous` with every role (loopback-only use, see `config`).
//!
//! The caller rides on the request (handlers check finer rules, like `record` needing
//! `ingest`) and on the response (the metrics layer labels calls with it), and names
//! the tracing span of the call.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::config::{AuthSettings, Role};

/// The caller of a request, as the auth layer found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: Arc<str>,
    roles: Vec<Role>,
}

impl Caller {
    /// The caller when no callers are configured: may do everything.
    pub fn anonymous() -> Caller {
        Caller {
            name: "anonymous".into(),
            roles: vec![Role::Ingest, Role::Score, Role::Read, Role::Admin],
        }
    }

    pub fn may(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// PERMISSION_DENIED naming what was missing.
    pub fn denied(&self, what: &str, role: Role) -> Status {
        Status::permission_denied(format!(
            "caller '{}' may not {what}: it needs the {} role (it has: {})",
            self.name,
            role_name(role),
            self.roles
                .iter()
                .map(|r| role_name(*r))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Ingest => "ingest",
        Role::Score => "score",
        Role::Read => "read",
        Role::Admin => "admin",
    }
}

/// What an Open Inference Protocol (V2) call needs, by its gRPC method name: liveness
/// and readiness are probes, open like health (`None`); inference scores; metadata
/// reads. The REST door names each of its paths by the same method
/// (`rest::v2_method`), so both doors read this one table.
pub(crate) fn v2_role(method: &str) -> Option<Role> {
    match method {
        "ServerLive" | "ServerReady" => None,
        "ModelInfer" => Some(Role::Score),
        _ => Some(Role::Read),
    }
}

/// What a gRPC path needs: `None` = open to all.
fn required_role(path: &str) -> Option<Option<Role>> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    Some(match (service, method) {
        ("grpc.health.v1.Health", _) => return None,
        (s, _) if s.starts_with("grpc.reflection.") => return None,
        ("streamscore.v1.Ingest", _) => Some(Role::Ingest),
        ("streamscore.v1.Scoring", _) => Some(Role::Score),
        ("streamscore.v1.Features", _) => Some(Role::Read),
        ("streamscore.v1.Models", "LoadModel" | "SetAlias" | "RetireModel") => Some(Role::Admin),
        ("streamscore.v1.Models", _) => Some(Role::Read),
        ("inference.GRPCInferenceService", method) => return v2_role(method).map(Some),
        // Unknown: no role, but a known caller (the router answers UNIMPLEMENTED).
        _ => None,
    })
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Hex (with or without colons, any case) -> 32 bytes.
fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let hex: String = text.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The configured callers, by the SHA-256 of their token or certificate.
#[derive(Debug, Default)]
pub struct Callers {
    tokens: HashMap<[u8; 32], Caller>,
    certificates: HashMap<[u8; 32], Caller>,
}

impl Callers {
    pub fn from_settings(settings: &AuthSettings) -> Result<Callers, String> {
        let mut callers = Callers::default();
        let entries = settings
            .tokens
            .iter()
            .map(|t| (&t.name, &t.sha256, &t.roles, "auth.tokens", true))
            .chain(
                settings
                    .certificates
                    .iter()
                    .map(|c| (&c.name, &c.sha256, &c.roles, "auth.certificates", false)),
            );
        for (name, hash, roles, section, is_token) in entries {
            let Some(key) = parse_sha256(hash) else {
                return Err(format!(
                    "{section} '{name}': sha256 must be 64 hex digits (got {} characters)",
                    hash.len()
                ));
            };
            if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
                return Err(format!(
                    "{section}: a caller name must be 1-64 printable characters"
                ));
            }
            let caller = Caller {
                name: name.as_str().into(),
                roles: roles.clone(),
            };
            let map = if is_token {
                &mut callers.tokens
            } else {
                &mut callers.certificates
            };
            if map.insert(key, caller).is_some() {
                return Err(format!(
                    "{section} '{name}': the same sha256 is listed twice"
                ));
            }
        }
        Ok(callers)
    }

    fn enabled(&self) -> bool {
        !self.tokens.is_empty() || !self.certificates.is_empty()
    }

    /// Whether `request` (from another door than gRPC) may go on to need `role`:
    /// always when no callers are configured, else by its bearer token.
    pub(crate) fn authorize<B>(
        &self,
        request: &http::Request<B>,
        role: Role,
        what: &str,
    ) -> Result<Caller, Status> {
        if !self.enabled() {
            return Ok(Caller::anonymous());
        }
        let caller = self.identify(request)?;
        if caller.may(role) {
            Ok(caller)
        } else {
            Err(caller.denied(what, role))
        }
    }

    /// Who sent `request`, or why nobody known did.
    fn identify<B>(&self, request: &http::Request<B>) -> Result<Caller, Status> {
        if let Some(header) = request.headers().get(http::header::AUTHORIZATION) {
            let token = header
                .to_str()
                .ok()
                .and_then(|h| h.strip_prefix("Bearer "))
                .ok_or_else(|| {
                    Status::unauthenticated("authorization: expected 'Bearer <token>'")
                })?;
            // Looked up by hash: the comparison never touches the secret itself.
            return self
                .tokens
                .get(&sha256(token.trim().as_bytes()))
                .cloned()
                .ok_or_else(|| Status::unauthenticated("authorization: unknown bearer token"));
        }
        let certificate = request
            .extensions()
            .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
            .and_then(|info| info.peer_certs())
            .and_then(|chain| chain.first().map(|c| sha256(c.as_ref())));
        if let Some(fingerprint) = certificate {
            return self.certificates.get(&fingerprint).cloned().ok_or_else(|| {
                Status::unauthenticated("the client certificate is not mapped to a caller")
            });
        }
        Err(Status::unauthenticated(
            "this server needs 'authorization: Bearer <token>' metadata or a known client certificate",
        ))
    }
}

#[derive(Clone)]
pub struct AuthLayer {
    callers: Arc<Callers>,
    /// Admin calls are answered on another listener: refuse them here.
    admin_elsewhere: bool,
}

impl AuthLayer {
    pub fn new(callers: Callers) -> AuthLayer {
        AuthLayer {
            callers: Arc::new(callers),
            admin_elsewhere: false,
        }
    }

    /// The same callers, for a listener that must not answer admin calls.
    pub fn admin_elsewhere(self) -> AuthLayer {
        AuthLayer {
            admin_elsewhere: true,
            ..self
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            callers: Arc::clone(&self.callers),
            admin_elsewhere: self.admin_elsewhere,
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    callers: Arc<Callers>,
    admin_elsewhere: bool,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Auth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let required = required_role(request.uri().path());
        let unauthenticated = || Caller {
            name: "unauthenticated".into(),
            roles: Vec::new(),
        };
        // (who the caller is, as far as known; whether the call may go on)
        let (caller, allowed) = match (self.callers.enabled(), required) {
            (_, Some(Some(Role::Admin))) if self.admin_elsewhere => (
                unauthenticated(),
                Err(Status::permission_denied(
                    "admin calls (LoadModel, SetAlias, RetireModel) are answered on the admin listener (admin.listen), not on this port",
                )),
            ),
            (false, _) => (Caller::anonymous(), Ok(())),
            // Health and reflection: open, and named if the caller says who it is.
            (true, None) => (
                self.callers
                    .identify(&request)
                    .unwrap_or_else(|_| unauthenticated()),
                Ok(()),
            ),
            (true, Some(role)) => match self.callers.identify(&request) {
                Err(status) => (unauthenticated(), Err(status)),
                Ok(caller) => match role {
                    Some(role) if !caller.may(role) => {
                        let method = request.uri().path().rsplit('/').next().unwrap_or("");
                        let denied = caller.denied(&format!("call {method}"), role);
                        (caller, Err(denied))
                    }
                    _ => (caller, Ok(())),
                },
            },
        };
        match allowed {
            Ok(()) => {
                let span = tracing::info_span!("caller", caller = %caller.name);
                request.extensions_mut().insert(caller.clone());
                Box::pin(
                    async move {
                        let mut response = inner.call(request).await?;
                        response.extensions_mut().insert(caller);
                        Ok(response)
                    }
                    .instrument(span),
                )
            }
            Err(status) => {
                tracing::warn!(caller = %caller.name, path = %request.uri().path(), code = ?status.code(), reason = status.message(), "call refused");
                let mut response = status.into_http::<ResBody>();
                response.extensions_mut().insert(caller);
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_its_role() {
        assert_eq!(
            required_role("/streamscore.v1.Models/SetAlias"),
            Some(Some(Role::Admin))
        );
        assert_eq!(
            required_role("/streamscore.v1.Models/LoadModel"),
            Some(Some(Role::Admin))
        );
        assert_eq!(
            required_role("/streamscore.v1.Models/RetireModel"),
            Some(Some(Role::Admin))
        );
        assert_eq!(
            required_role("/streamscore.v1.Models/ListModels"),
            Some(Some(Role::Read))
        );
        assert_eq!(
            required_role("/streamscore.v1.Scoring/Score"),
            Some(Some(Role::Score))
        );
        assert_eq!(
            required_role("/streamscore.v1.Scoring/Recommend"),
            Some(Some(Role::Score))
        );
        assert_eq!(
            required_role("/streamscore.v1.Ingest/IngestStream"),
            Some(Some(Role::Ingest))
        );
        assert_eq!(
            required_role("/streamscore.v1.Features/GetFeatures"),
            Some(Some(Role::Read))
        );
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            required_role("/inference.GRPCInferenceService/ModelInfer"),
            Some(Some(Role::Score))
        );
        assert_eq!(
            required_role("/inference.GRPCInferenceService/ModelMetadata"),
            Some(Some(Role::Read))
        );
        assert_eq!(
            required_role("/inference.GRPCInferenceService/ServerLive"),
            None
        );
        assert_eq!(required_role("/made.Up/Thing"), Some(None));
    }

    #[test]
    fn hashes_parse_with_or_without_colons() {
        let plain = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_sha256(&plain), Some([0xab; 32]));
        assert_eq!(parse_sha256(&colons), Some([0xab; 32]));
        assert_eq!(parse_sha256("abc"), None);
    }
}
