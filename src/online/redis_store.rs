//! The online store on Redis Cluster (redis-rs, async cluster connection). Writes are
//! compare-and-set on the record's sequence number (one Lua script, so the check and
//! the write are one step on the key's master); reads of a request's few entities are
//! sent together, and the multiplexed connection pipelines them per node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use futures_util::future::try_join_all;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use super::cut::Cut;
use super::record::{EntityRecord, RecordError, cut_key, entity_key, progress_key, watermark_key};
use crate::config::ClusterSettings;
use crate::definitions::{Definitions, EntityTypeId};

/// Writes a record when its sequence number is higher than the stored one. Sequence
/// numbers stay below 2^53, where Lua's numbers are exact. Returns 1 when written, 0
/// when the stored record is as new or newer (the caller is a stale owner, or retried).
const COMPARE_AND_SET: &str = r"
local stored = redis.call('HGET', KEYS[1], 'o')
if stored and tonumber(stored) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'o', ARGV[1], 'f', ARGV[2], 's', ARGV[3], 'x', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// Publishes how far an aggregator's partitions are and folds every partition's into
/// the tier's cut (see [`super::cut`]), in one step on the `{meta}` slot: raises the
/// watermark (`KEYS[3]`) to `ARGV[2]`, sets the `partition|lane` fields of the progress
/// hash (`KEYS[1]`) from the pairs after `ARGV[2]`, then, per lane that all `ARGV[1]`
/// entity partitions have published, takes the lowest as the lane's place in the cut
/// (`KEYS[2]`, `version;lane:through,...`) when that is further than it was: a cut
/// only moves on (each place in it was true when set, and records only grow). Offsets
/// stay below 2^44, where Lua's numbers are exact.
const PUBLISH_PROGRESS: &str = r"
local watermark = redis.call('GET', KEYS[3])
if not watermark or tonumber(watermark) < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[3], ARGV[2])
end
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
local lowest, published = {}, {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local lane = string.match(fields[i], '|(%d+)$')
  if lane then
    local through = tonumber(fields[i + 1])
    if lowest[lane] == nil or through < lowest[lane] then
      lowest[lane] = through
    end
    published[lane] = (published[lane] or 0) + 1
  end
end
local version, cut = 0, {}
local stored = redis.call('GET', KEYS[2])
if stored then
  local v, lanes = string.match(stored, '^(%d+);(.*)$')
  version = tonumber(v) or 0
  for lane, through in string.gmatch(lanes or '', '(%d+):(%d+)') do
    cut[lane] = tonumber(through)
  end
end
for lane, through in pairs(lowest) do
  if published[lane] >= tonumber(ARGV[1]) and (cut[lane] == nil or through > cut[lane]) then
    cut[lane] = through
  end
end
local out = {}
for lane, through in pairs(cut) do
  table.insert(out, lane .. ':' .. string.format('%d', through))
end
redis.call('SET', KEYS[2], string.format('%d', version + 1) .. ';' .. table.concat(out, ','))
return version + 1
";

/// Raises the stored watermark to `ARGV[1]` when that is newer. Event times in ms stay
/// below 2^53, where Lua's numbers are exact.
const ADVANCE_WATERMARK: &str = r"
local stored = redis.call('GET', KEYS[1])
if stored and tonumber(stored) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
";

/// Keeps `ARGV[1]` under `KEYS[1]` for `ARGV[2]` ms unless something is kept there
/// already; returns what was kept before (nothing: ours is kept now).
const KEEP_FIRST: &str = r"
local kept = redis.call('GET', KEYS[1])
if kept then
  return kept
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

/// Where the online store is and how to log in to it. The credentials are kept apart
/// from the node addresses, so no address carries them into a message or a log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RedisAccess {
    /// Some of the cluster's nodes, `host:port` (the rest are discovered).
    pub nodes: Vec<String>,
    /// The ACL user to log in as; `None`: the default user.
    pub username: Option<String>,
    /// A file holding the password (`requirepass`, or the ACL user's); `None`: no AUTH.
    pub password_file: Option<std::path::PathBuf>,
    /// TLS to every node; `None`: plain TCP.
    pub tls: Option<RedisTls>,
}

/// How a TLS connection to the nodes is checked and, if they ask, who we are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RedisTls {
    /// The CA (PEM) that signed the nodes' certificates; `None`: the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// A client certificate and its key (PEM), for nodes that require one.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl From<&ClusterSettings> for RedisAccess {
    /// Where the settings say the online store is, and how to log in.
    fn from(cluster: &ClusterSettings) -> Self {
        RedisAccess {
            nodes: cluster.redis.clone(),
            username: (!cluster.redis_username.is_empty()).then(|| cluster.redis_username.clone()),
            password_file: cluster.redis_password_file.clone(),
            tls: cluster.redis_tls.then(|| RedisTls {
                ca_file: cluster.redis_tls_ca_file.clone(),
                client: cluster
                    .redis_tls_cert_file
                    .clone()
                    .zip(cluster.redis_tls_key_file.clone()),
            }),
        }
    }
}

impl RedisAccess {
    /// Nodes that need no AUTH.
    pub fn open(nodes: &[String]) -> RedisAccess {
        RedisAccess {
            nodes: nodes.to_vec(),
            ..RedisAccess::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OnlineError {
    /// The store failed a call. The message names the store and what went wrong, never
    /// a node (it goes to clients); the detail is logged where it happens.
    #[error("online store (Redis Cluster): {}", describe(source))]
    Redis {
        #[source]
        source: redis::RedisError,
    },
    #[error("online store: cannot read cluster.{setting} {path}: {source}")]
    SettingFile {
        setting: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("encoding the state of {key}: {source}")]
    Encode {
        key: String,
        #[source]
        source: postcard::Error,
    },
    #[error("online store: the entity tier's cut is unreadable")]
    Cut,
    #[error("sequence number {seq} of {key} is not below 2^53, the largest Lua compares exactly")]
    SeqTooLarge { key: String, seq: u64 },
}

/// The bytes of a file a setting names (a password, a certificate, a key).
fn read_setting_file(
    setting: &'static str,
    path: &std::path::Path,
) -> Result<Vec<u8>, OnlineError> {
    std::fs::read(path).map_err(|source| OnlineError::SettingFile {
        setting,
        path: path.to_path_buf(),
        source,
    })
}

/// What went wrong, in words safe for any client: no address, no credential.
fn describe(error: &redis::RedisError) -> String {
    // The cluster client wraps a refused login of its first connections in an I/O
    // error, so the words are looked for too.
    let text = error.to_string();
    let refused_login = matches!(error.kind(), redis::ErrorKind::AuthenticationFailed)
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
        || ["AuthenticationFailed", "NOAUTH", "WRONGPASS", "NOPERM"]
            .iter()
            .any(|word| text.contains(word));
    let lower = text.to_lowercase();
    if refused_login {
        "authentication refused (check cluster.redis_username and cluster.redis_password_file)"
            .into()
    } else if ["certificate", "unknownissuer", "handshake"]
        .iter()
        .any(|word| lower.contains(word))
    {
        "TLS refused: the nodes' certificate is not trusted, or they asked for ours (check cluster.redis_tls_ca_file, redis_tls_cert_file and redis_tls_key_file)"
            .into()
    } else if error.is_timeout() {
        "timed out".into()
    } else if error.is_connection_refusal() || error.is_io_error() || error.is_connection_dropped()
    {
        "unreachable".into()
    } else if error.is_cluster_error() {
        "not every slot is served (a master down?)".into()
    } else {
        format!("the call failed ({:?})", error.kind())
    }
}

/// Whether a compare-and-set write landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Stored,
    /// The stored record was as new or newer; nothing changed.
    Stale,
}

const MAX_EXACT_SEQ: u64 = 1 << 53;

/// A record's fields as read: sequence number, fingerprint, state.
type StoredFields = (
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

/// A connection to the online store, cheap to clone (one multiplexed connection per
/// node, shared).
#[derive(Clone)]
pub struct RedisOnline {
    shared: Arc<Shared>,
    script: redis::Script,
    advance: redis::Script,
    publish: redis::Script,
    keep_first: redis::Script,
}

struct Shared {
    nodes: String,
    client: ClusterClient,
    connection: ArcSwap<ClusterConnection>,
    /// When the connection was last rebuilt: at most one rebuild a second.
    rebuilt: tokio::sync::Mutex<Instant>,
}

/// How often a broken connection is rebuilt at most.
const REBUILD_EVERY: Duration = Duration::from_secs(1);

impl RedisOnline {
    /// Connects to a cluster given some of its nodes (`host:port`); the rest are
    /// discovered.
    pub async fn connect(nodes: &[String]) -> Result<RedisOnline, OnlineError> {
        Self::connect_with(&RedisAccess::open(nodes)).await
    }

    /// Connects as `access` says, logging in when it names a password.
    pub async fn connect_with(access: &RedisAccess) -> Result<RedisOnline, OnlineError> {
        let joined = access.nodes.join(",");
        let fail = |source: redis::RedisError| {
            tracing::warn!(nodes = %joined, error = %source, "online store: cannot connect");
            OnlineError::Redis { source }
        };
        let scheme = if access.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let urls: Vec<String> = access
            .nodes
            .iter()
            .map(|n| format!("{scheme}://{n}/"))
            .collect();
        // Bounded waits: a master that is down must fail a request with an error the
        // caller can report, not hold it.
        let mut builder = ClusterClient::builder(urls)
            .retries(2)
            .connection_timeout(Duration::from_secs(1))
            .response_timeout(Duration::from_secs(1));
        if let Some(path) = &access.password_file {
            let password = String::from_utf8(read_setting_file("redis_password_file", path)?)
                .map_err(|_| OnlineError::SettingFile {
                    setting: "redis_password_file",
                    path: path.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"),
                })?;
            // A trailing newline is the editor's, not the password's.
            builder = builder.password(password.trim_end_matches(['\r', '\n']));
        }
        if let Some(tls) = &access.tls {
            let root_cert = match &tls.ca_file {
                Some(path) => Some(read_setting_file("redis_tls_ca_file", path)?),
                None => None,
            };
            let client_tls = match &tls.client {
                Some((cert, key)) => Some(redis::ClientTlsConfig {
                    client_cert: read_setting_file("redis_tls_cert_file", cert)?,
                    client_key: read_setting_file("redis_tls_key_file", key)?,
                }),
                None => None,
            };
            builder = builder.certs(redis::TlsCertificates {
                client_tls,
                root_cert,
            });
        }
        if let Some(username) = &access.username {
            builder = builder.username(username);
        }
        let client = builder.build().map_err(fail)?;
        let connection = client.get_async_connection().await.map_err(fail)?;
        Ok(RedisOnline {
            shared: Arc::new(Shared {
                nodes: joined,
                client,
                connection: ArcSwap::from_pointee(connection),
                rebuilt: tokio::sync::Mutex::new(Instant::now()),
            }),
            script: redis::Script::new(COMPARE_AND_SET),
            advance: redis::Script::new(ADVANCE_WATERMARK),
            publish: redis::Script::new(PUBLISH_PROGRESS),
            keep_first: redis::Script::new(KEEP_FIRST),
        })
    }

    fn connection(&self) -> ClusterConnection {
        ClusterConnection::clone(&self.shared.connection.load())
    }

    /// The error of a failed call. A connection-level failure (a master down, a
    /// timeout) also rebuilds the connection: redis-rs keeps timing out on the old one
    /// after a killed master comes back on its port.
    async fn failed(&self, source: redis::RedisError) -> OnlineError {
        let broken = source.is_io_error()
            || source.is_timeout()
            || source.is_connection_dropped()
            || source.is_connection_refusal()
            || source.is_cluster_error();
        if broken {
            let mut rebuilt = self.shared.rebuilt.lock().await;
            if rebuilt.elapsed() >= REBUILD_EVERY {
                *rebuilt = Instant::now();
                match self.shared.client.get_async_connection().await {
                    Ok(connection) => self.shared.connection.store(Arc::new(connection)),
                    Err(error) => {
                        tracing::warn!(nodes = %self.shared.nodes, %error, "online store still unreachable")
                    }
                }
            }
        }
        tracing::warn!(nodes = %self.shared.nodes, error = %source, "online store call failed");
        OnlineError::Redis { source }
    }

    /// Writes each record under its key with a time to live, each by compare-and-set;
    /// all are sent at once.
    pub async fn write(
        &self,
        records: &[(String, EntityRecord)],
        ttl_ms: impl Fn(&str) -> u64,
    ) -> Result<Vec<Written>, OnlineError> {
        let mut calls = Vec::with_capacity(records.len());
        for (key, record) in records {
            if record.seq >= MAX_EXACT_SEQ {
                return Err(OnlineError::SeqTooLarge {
                    key: key.clone(),
                    seq: record.seq,
                });
            }
            let state = record
                .encode_state()
                .map_err(|source| OnlineError::Encode {
                    key: key.clone(),
                    source,
                })?;
            let mut invocation = self.script.key(key);
            invocation
                .arg(record.seq)
                .arg(record.fingerprint.to_string())
                .arg(state)
                .arg(ttl_ms(key).max(1))
                .arg(record.sealed.encode());
            let mut connection = self.connection();
            calls.push(async move {
                let stored: i64 = invocation.invoke_async(&mut connection).await?;
                Ok::<_, redis::RedisError>(if stored == 1 {
                    Written::Stored
                } else {
                    Written::Stale
                })
            });
        }
        match try_join_all(calls).await {
            Ok(written) => Ok(written),
            Err(error) => Err(self.failed(error).await),
        }
    }

    /// Reads the records of `entities` (type, id) under `definitions` (`None` for one
    /// not stored), as [`Self::read`] does.
    pub async fn read_entities(
        &self,
        definitions: &Definitions,
        entities: &[(EntityTypeId, String)],
    ) -> Result<Vec<Option<EntityRecord>>, OnlineError> {
        let keys: Vec<String> = entities
            .iter()
            .map(|(entity, id)| {
                entity_key(
                    definitions.state_fingerprint,
                    &definitions.entities[*entity].name,
                    id,
                )
            })
            .collect();
        self.read(&keys, definitions.state_fingerprint).await
    }

    /// Reads the records of `keys` (`None` for a key not stored), checked against the
    /// running definitions' fingerprint; all are sent at once.
    pub async fn read(
        &self,
        keys: &[String],
        fingerprint: u64,
    ) -> Result<Vec<Option<EntityRecord>>, OnlineError> {
        let calls = keys.iter().map(|key| {
            let mut connection = self.connection();
            async move {
                let fields: StoredFields = redis::cmd("HMGET")
                    .arg(key)
                    .arg("o")
                    .arg("f")
                    .arg("s")
                    .arg("x")
                    .query_async(&mut connection)
                    .await?;
                Ok::<_, redis::RedisError>(fields)
            }
        });
        let replies = match try_join_all(calls).await {
            Ok(replies) => replies,
            Err(error) => return Err(self.failed(error).await),
        };
        keys.iter()
            .zip(replies)
            .map(|(key, (seq, stored_fingerprint, state, sealed))| {
                if seq.is_none() && stored_fingerprint.is_none() && state.is_none() {
                    return Ok(None);
                }
                EntityRecord::decode(
                    key,
                    seq.as_deref(),
                    stored_fingerprint.as_deref(),
                    state.as_deref(),
                    sealed.as_deref(),
                    fingerprint,
                )
                .map(Some)
                .map_err(OnlineError::from)
            })
            .collect()
    }

    /// Keeps `value` under `key` for `ttl_ms` unless a value is kept there already, in
    /// one step on the key's master: the first of two racing writers wins. Returns the
    /// value kept before (`None`: `value` is kept now).
    pub async fn keep_first(
        &self,
        key: &str,
        value: &[u8],
        ttl_ms: u64,
    ) -> Result<Option<Vec<u8>>, OnlineError> {
        let mut connection = self.connection();
        let result: Result<Option<Vec<u8>>, _> = self
            .keep_first
            .key(key)
            .arg(value)
            .arg(ttl_ms.max(1))
            .invoke_async(&mut connection)
            .await;
        match result {
            Ok(kept) => Ok(kept),
            Err(error) => Err(self.failed(error).await),
        }
    }

    /// The value kept under `key` (`None`: none).
    pub async fn kept(&self, key: &str) -> Result<Option<Vec<u8>>, OnlineError> {
        let mut connection = self.connection();
        match redis::cmd("GET")
            .arg(key)
            .query_async::<Option<Vec<u8>>>(&mut connection)
            .await
        {
            Ok(kept) => Ok(kept),
            Err(error) => Err(self.failed(error).await),
        }
    }

    /// The remaining time to live of a key in milliseconds (`None`: no key, or none set).
    pub async fn ttl_ms(&self, key: &str) -> Result<Option<u64>, OnlineError> {
        let mut connection = self.connection();
        match redis::cmd("PTTL")
            .arg(key)
            .query_async::<i64>(&mut connection)
            .await
        {
            Ok(ttl) => Ok(u64::try_from(ttl).ok()),
            Err(error) => Err(self.failed(error).await),
        }
    }

    /// Raises the watermark of the aggregators running the definitions with state
    /// fingerprint `fingerprint` to `watermark_ms` (never lowers it): the newest event
    /// time they applied. Their scorers read as of it (expiry, the oldest moment
    /// answered exactly) as the embedded engine does with its own.
    pub async fn advance_watermark(
        &self,
        fingerprint: u64,
        watermark_ms: i64,
    ) -> Result<(), OnlineError> {
        let mut connection = self.connection();
        let result: Result<i64, _> = self
            .advance
            .key(watermark_key(fingerprint))
            .arg(watermark_ms)
            .invoke_async(&mut connection)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(error) => Err(self.failed(error).await),
        }
    }

    /// The watermark of the definitions with state fingerprint `fingerprint` (`None`
    /// before any of their aggregators wrote one).
    pub async fn watermark(&self, fingerprint: u64) -> Result<Option<i64>, OnlineError> {
        let mut connection = self.connection();
        match redis::cmd("GET")
            .arg(watermark_key(fingerprint))
            .query_async::<Option<i64>>(&mut connection)
            .await
        {
            Ok(watermark) => Ok(watermark),
            Err(error) => Err(self.failed(error).await),
        }
    }

    /// Raises the watermark of the aggregators running `fingerprint`'s definitions to
    /// `watermark_ms` and publishes how far their records are: `progress` holds
    /// `(entity partition, lane, through)` (see [`super::cut`]); `partitions` is how many
    /// entity partitions the definitions have, all of which must have published a lane
    /// before the cut takes it in. Returns the new cut's version.
    pub async fn publish_progress(
        &self,
        fingerprint: u64,
        watermark_ms: i64,
        partitions: usize,
        progress: impl IntoIterator<Item = (String, u32, u64)>,
    ) -> Result<u64, OnlineError> {
        let mut invocation = self.publish.key(progress_key(fingerprint));
        invocation
            .key(cut_key(fingerprint))
            .key(watermark_key(fingerprint))
            .arg(partitions)
            .arg(watermark_ms);
        for (partition, lane, through) in progress {
            invocation.arg(format!("{partition}|{lane}")).arg(through);
        }
        let mut connection = self.connection();
        match invocation.invoke_async(&mut connection).await {
            Ok(version) => Ok(version),
            Err(error) => Err(self.failed(error).await),
        }
    }

    /// The shared watermark and the tier's cut of `fingerprint`'s definitions, read in
    /// one step (one slot). No cut published yet: the empty cut (version 0), which
    /// sees only untagged events.
    pub async fn watermark_and_cut(
        &self,
        fingerprint: u64,
    ) -> Result<(Option<i64>, Cut), OnlineError> {
        let mut connection = self.connection();
        let (watermark, cut): (Option<i64>, Option<String>) = match redis::cmd("MGET")
            .arg(watermark_key(fingerprint))
            .arg(cut_key(fingerprint))
            .query_async(&mut connection)
            .await
        {
            Ok(read) => read,
            Err(error) => return Err(self.failed(error).await),
        };
        let cut = match cut {
            None => Cut::default(),
            Some(text) => Cut::decode(&text).ok_or(OnlineError::Cut)?,
        };
        Ok((watermark, cut))
    }
}
