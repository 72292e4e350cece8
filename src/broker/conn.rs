//! How the broker reaches Redis: one type for a single server and for a
//! Redis Cluster, so the rest of the broker has no per-mode branches.
//!
//! `broker.redis_url` names either one server (`redis://host:port/`, the
//! redis crate's `ConnectionManager`: one multiplexed, reconnecting
//! connection) or a cluster (`redis+cluster://h1:p1,h2:p2,...`, or a TOML
//! list of more than one `redis://` URL: the seeds). A cluster is reached
//! through the crate's `ClusterConnection`, which keeps one multiplexed
//! connection per node, routes each command by its key's slot, follows
//! `MOVED`/`ASK` and re-subscribes sharded channels after a failover or a
//! slot move. Both speak RESP3 and hand pushed messages to the same
//! channel.
//!
//! Two things the cluster connection does not do by itself are done here:
//! - **Cross-slot pipelines.** The crate sends a pipeline to the node of
//!   its first key and refuses one whose keys hash to different slots.
//!   The broker's pipelines batch events of many exams (and `EXISTS` over
//!   instance keys), so [`BrokerConn`] splits such a pipeline into one
//!   pipeline per slot, sends them concurrently and puts the replies back
//!   in order. Commands with no key (`SCRIPT LOAD`, `PING`) go with every
//!   part, so a script is loaded on every node that runs it. Order is kept
//!   where it matters: all of an exam's keys share its hash tag, hence one
//!   slot, hence one part.
//! - **Subscriptions on a connection of their own (cluster).** redis 1.8's
//!   node connections take every subscription push as the reply to the
//!   oldest request in flight: the `sunsubscribe` a node sends unasked
//!   when a slot moves away, and the extra confirmations of the cluster
//!   connection's own re-subscriptions after a slot refresh (one
//!   `SUBSCRIBE a b` answered twice, read as one reply). Either shifts that
//!   node's replies by one for good: a numbering script "succeeded" with a
//!   stray confirmation and its events were never numbered, and every later
//!   command on the node got the previous one's answer. So a cluster gets
//!   two connections: one for subscriptions (with the push sender), where
//!   only subscription commands run, and one for every other command,
//!   which subscribes to nothing and so never sees a push.
//! - **Sharded subscriptions on a single server.** The crate's
//!   `ConnectionManager` has no `ssubscribe`; a raw `SSUBSCRIBE` of one
//!   channel is answered by one confirmation push, which the connection
//!   takes as the reply and remembers for its automatic re-subscription.

use std::time::Duration;

use redis::{
    Cmd, Pipeline, PushInfo, RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::{ClusterClientBuilder, ClusterConfig},
    cluster_async::ClusterConnection,
    cluster_routing::Slot,
};
use tokio::sync::mpsc;

/// What `broker.redis_url` names, once parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One server (`redis://...`).
    Single(String),
    /// A cluster, by its seed nodes (`redis://host:port/...` each).
    Cluster(Vec<String>),
}

/// The value of `broker.redis_url`: one URL, or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum RedisUrl {
    One(String),
    Many(Vec<String>),
}

impl Default for RedisUrl {
    fn default() -> Self {
        RedisUrl::One(String::new())
    }
}

impl From<String> for RedisUrl {
    fn from(url: String) -> Self {
        RedisUrl::One(url)
    }
}

impl From<&str> for RedisUrl {
    fn from(url: &str) -> Self {
        RedisUrl::One(url.to_owned())
    }
}

impl RedisUrl {
    /// What it names: `Ok(None)` when empty (the in-memory broker), an
    /// error saying what is wrong with a form it does not accept.
    pub fn target(&self) -> Result<Option<Target>, String> {
        match self {
            RedisUrl::One(url) if url.trim().is_empty() => Ok(None),
            RedisUrl::One(url) => parse_one(url.trim()).map(Some),
            RedisUrl::Many(urls) => match urls.as_slice() {
                [] => Ok(None),
                [one] => RedisUrl::One(one.clone()).target(),
                seeds => {
                    let mut nodes = Vec::with_capacity(seeds.len());
                    for seed in seeds {
                        match parse_one(seed.trim())? {
                            Target::Single(url) => nodes.push(url),
                            Target::Cluster(_) => {
                                return Err(format!(
                                    "lists cluster seeds as plain redis:// URLs, not `{seed}`"
                                ));
                            }
                        }
                    }
                    Ok(Some(Target::Cluster(nodes)))
                }
            },
        }
    }
}

/// One URL: `redis://...` or `redis+cluster://h1:p1,h2:p2[/db][?query]`.
fn parse_one(url: &str) -> Result<Target, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "is not a URL: `{url}` (expected redis://host:port/)"
        ));
    };
    match scheme {
        "redis" => {
            if rest.split(['/', '?']).next().unwrap_or("").contains(',') {
                return Err(format!(
                    "names several hosts in a redis:// URL; for a cluster write redis+cluster://{rest}"
                ));
            }
            Ok(Target::Single(url.to_owned()))
        }
        "redis+cluster" => {
            let (authority, tail) = match rest.find(['/', '?']) {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let (userinfo, hosts) = match authority.rsplit_once('@') {
                Some((u, h)) => (format!("{u}@"), h),
                None => (String::new(), authority),
            };
            let mut nodes = Vec::new();
            for host in hosts.split(',') {
                let host = host.trim();
                let port_ok = host
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !port_ok {
                    return Err(format!(
                        "has a cluster seed `{host}` that is not host:port (in `{url}`)"
                    ));
                }
                let tail = if tail.is_empty() { "/" } else { tail };
                nodes.push(format!("redis://{userinfo}{host}{tail}"));
            }
            Ok(Target::Cluster(nodes))
        }
        "rediss+cluster" => Err(
            "asks for TLS to a Redis Cluster (rediss+cluster://), which this build does not \
             support; reach the cluster over a private network or a TLS tunnel with redis+cluster://"
                .into(),
        ),
        "redis+sentinel" | "rediss+sentinel" => Err(
            "names a Sentinel deployment, which is not supported; point it at the primary \
             (redis://) behind a stable address, or use a Redis Cluster (redis+cluster://)"
                .into(),
        ),
        other => Err(format!(
            "has the scheme `{other}`; expected redis:// or redis+cluster://"
        )),
    }
}

/// A connection to Redis, single or cluster; cheap to clone (every clone
/// shares the same multiplexed connection or connections).
#[derive(Clone)]
pub enum BrokerConn {
    Single(ConnectionManager),
    Cluster {
        /// Every command but (un)subscriptions: no push ever arrives here,
        /// so its replies cannot be mismatched (see the module's doc).
        commands: ClusterConnection,
        /// Subscriptions only, with the push sender: the crate tracks them
        /// and moves them after a failover or a slot move.
        pubsub: ClusterConnection,
    },
}

impl BrokerConn {
    /// A lazy connection: nothing is dialled until the first command, so an
    /// instance starts (and serves its own members) while Redis is down.
    /// Pushed messages (sharded and classic pub/sub, disconnections) go to
    /// `pushes`.
    pub fn open(target: &Target, pushes: mpsc::UnboundedSender<PushInfo>) -> RedisResult<Self> {
        const TIMEOUT: Duration = Duration::from_secs(2);
        match target {
            Target::Single(url) => {
                let client = redis::Client::open(with_resp3(url))?;
                let config = ConnectionManagerConfig::new()
                    .set_push_sender(pushes)
                    .set_automatic_resubscription()
                    .set_connection_timeout(Some(TIMEOUT))
                    .set_response_timeout(Some(TIMEOUT))
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(2))
                    .set_number_of_retries(2);
                Ok(BrokerConn::Single(ConnectionManager::new_lazy_with_config(
                    client, config,
                )?))
            }
            Target::Cluster(seeds) => {
                let client = ClusterClientBuilder::new(seeds.iter().map(|s| with_resp3(s)))
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .retries(3)
                    .min_retry_wait(50)
                    .max_retry_wait(1000)
                    .build()?;
                // The per-connection config overrides the builder's
                // timeouts, so they are set here.
                let config = || {
                    ClusterConfig::new()
                        .set_connection_timeout(TIMEOUT)
                        .set_response_timeout(TIMEOUT)
                };
                Ok(BrokerConn::Cluster {
                    commands: client.get_pending_async_connection_with_config(config()),
                    pubsub: client
                        .get_pending_async_connection_with_config(config().set_push_sender(pushes)),
                })
            }
        }
    }

    /// Subscribes to a sharded channel (`SSUBSCRIBE`), routed to the node
    /// that owns its slot.
    pub async fn ssubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            BrokerConn::Single(c) => redis::cmd("SSUBSCRIBE").arg(channel).query_async(c).await,
            BrokerConn::Cluster { pubsub, .. } => pubsub.ssubscribe(channel).await,
        }
    }

    pub async fn sunsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            BrokerConn::Single(c) => redis::cmd("SUNSUBSCRIBE").arg(channel).query_async(c).await,
            BrokerConn::Cluster { pubsub, .. } => pubsub.sunsubscribe(channel).await,
        }
    }

    /// Subscribes to a classic channel (`SUBSCRIBE`): a cluster broadcasts
    /// classic publishes to every node, so any node will do.
    pub async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            BrokerConn::Single(c) => c.subscribe(channel).await,
            BrokerConn::Cluster { pubsub, .. } => pubsub.subscribe(channel).await,
        }
    }
}

/// Asks for RESP3 (pushes on the command connection) unless the URL says.
fn with_resp3(url: &str) -> String {
    if url.contains("protocol=") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { "&" } else { "?" };
    format!("{url}{sep}protocol=resp3")
}

impl ConnectionLike for BrokerConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            BrokerConn::Single(c) => c.req_packed_command(cmd),
            BrokerConn::Cluster { commands, .. } => commands.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            BrokerConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            BrokerConn::Cluster { commands, .. } => {
                Box::pin(per_slot(commands, pipeline, offset, count))
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            BrokerConn::Single(c) => c.get_db(),
            BrokerConn::Cluster { commands, .. } => commands.get_db(),
        }
    }
}

/// Sends a pipeline whose keys may span slots as one pipeline per slot
/// (see the module's doc), concurrently, and returns the replies in the
/// pipeline's order. A pipeline of one slot (the usual case: one exam's
/// keys) goes as it is; so does a transaction, which must be one slot.
async fn per_slot(
    conn: &mut ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    let slots: Vec<Option<Slot>> = pipeline.cmd_iter().map(slot_of).collect();
    let mut distinct: Vec<Slot> = Vec::new();
    for slot in slots.iter().flatten() {
        if !distinct.contains(slot) {
            distinct.push(*slot);
        }
    }
    if distinct.len() <= 1 || pipeline.is_transaction() {
        return conn.req_packed_commands(pipeline, offset, count).await;
    }
    // Each part: its pipeline, and which of the original commands it holds.
    let parts: Vec<(Pipeline, Vec<usize>)> = distinct
        .iter()
        .map(|slot| {
            let mut part = redis::pipe();
            let mut indices = Vec::new();
            for (i, cmd) in pipeline.cmd_iter().enumerate() {
                if slots[i].is_none_or(|s| s == *slot) {
                    part.add_command(cmd.clone());
                    indices.push(i);
                }
            }
            (part, indices)
        })
        .collect();
    let replies = futures_util::future::try_join_all(parts.iter().map(|(part, _)| {
        let mut conn = conn.clone();
        async move { conn.req_packed_commands(part, 0, part.len()).await }
    }))
    .await?;
    let mut merged: Vec<Option<Value>> = vec![None; slots.len()];
    for ((_, indices), values) in parts.iter().zip(replies) {
        for (i, value) in indices.iter().zip(values) {
            // A keyless command ran in every part: keep its first reply.
            if merged[*i].is_none() {
                merged[*i] = Some(value);
            }
        }
    }
    Ok(merged
        .into_iter()
        .skip(offset)
        .take(count)
        .map(|v| v.unwrap_or(Value::Nil))
        .collect())
}

/// The slot of a command's first key; `None` for a command with none.
fn slot_of(cmd: &Cmd) -> Option<Slot> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(a) => Some(a),
            _ => None,
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    let key = match name.as_slice() {
        b"PING" | b"SCRIPT" | b"ECHO" | b"INFO" | b"TIME" | b"HELLO" | b"CLIENT" | b"CLUSTER"
        | b"FUNCTION" => None,
        // EVAL script numkeys key...
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            let numkeys: usize = std::str::from_utf8(args.get(2)?).ok()?.parse().ok()?;
            if numkeys == 0 {
                None
            } else {
                args.get(3).copied()
            }
        }
        _ => args.get(1).copied(),
    }?;
    Some(Slot::for_key(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: impl Into<RedisUrl>) -> Result<Option<Target>, String> {
        url.into().target()
    }

    #[test]
    fn one_url_is_a_single_server_and_empty_is_memory() {
        assert_eq!(target(""), Ok(None));
        assert_eq!(target(RedisUrl::Many(vec![])), Ok(None));
        assert_eq!(
            target("redis://127.0.0.1:6379/"),
            Ok(Some(Target::Single("redis://127.0.0.1:6379/".into())))
        );
        assert_eq!(
            target(RedisUrl::Many(vec!["redis://a:1/".into()])),
            Ok(Some(Target::Single("redis://a:1/".into())))
        );
    }

    #[test]
    fn a_cluster_url_or_a_list_names_the_seeds() {
        assert_eq!(
            target("redis+cluster://a:7000,b:7001"),
            Ok(Some(Target::Cluster(vec![
                "redis://a:7000/".into(),
                "redis://b:7001/".into()
            ])))
        );
        assert_eq!(
            target("redis+cluster://u:pw@a:7000,b:7001/?protocol=resp3"),
            Ok(Some(Target::Cluster(vec![
                "redis://u:pw@a:7000/?protocol=resp3".into(),
                "redis://u:pw@b:7001/?protocol=resp3".into()
            ])))
        );
        assert_eq!(
            target(RedisUrl::Many(vec![
                "redis://a:7000/".into(),
                "redis://b:7001/".into()
            ])),
            Ok(Some(Target::Cluster(vec![
                "redis://a:7000/".into(),
                "redis://b:7001/".into()
            ])))
        );
    }

    #[test]
    fn forms_it_does_not_take_are_refused_with_the_reason() {
        for (url, says) in [
            ("localhost:6379", "not a URL"),
            ("http://a:1/", "scheme `http`"),
            ("redis://a:1,b:2/", "redis+cluster://"),
            ("redis+cluster://a:7000,b", "`b` that is not host:port"),
            ("redis+cluster://a:x", "not host:port"),
            ("rediss+cluster://a:7000", "TLS"),
            ("redis+sentinel://a:26379/mymaster", "Sentinel"),
        ] {
            let err = target(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
        }
        let err = target(RedisUrl::Many(vec![
            "redis://a:1/".into(),
            "redis+cluster://b:2".into(),
        ]))
        .unwrap_err();
        assert!(err.contains("plain redis://"), "{err}");
    }

    #[test]
    fn a_command_is_routed_by_its_first_key_and_scripts_by_their_first_key() {
        let exam = |e: &str| Slot::for_key(format!("{{{e}}}"));
        let get = redis::cmd("GET").arg("p:{e1}:seq").clone();
        assert_eq!(slot_of(&get), Some(exam("e1")));
        let eval = redis::cmd("EVALSHA")
            .arg("sha")
            .arg(2)
            .arg("p:{e2}:seq")
            .arg("p:exam:{e2}")
            .clone();
        assert_eq!(slot_of(&eval), Some(exam("e2")));
        assert_eq!(slot_of(redis::cmd("SCRIPT").arg("LOAD").arg("x")), None);
        assert_eq!(slot_of(&redis::cmd("PING")), None);
        assert_eq!(slot_of(redis::cmd("EVAL").arg("s").arg(0)), None);
    }
}
