//! A real Redis Cluster for the cluster tests: three primaries and three
//! replicas (`redis-server --cluster-enabled yes` on free ports, joined by
//! `redis-cli --cluster create --cluster-replicas 1`), killed when dropped.
//! Node timeout 1 s, so a SIGKILLed primary is failed over in seconds.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{Prerequisite, missing};

/// What the instances of a test talk to: one server or a cluster.
pub trait Backplane {
    /// `broker.redis_url` for it.
    fn url(&self) -> String;
}

pub struct RedisCluster {
    /// Every node's client port, primaries and replicas (roles change on a
    /// failover).
    pub ports: Vec<u16>,
    children: Vec<(u16, Child)>,
    _dir: tempfile::TempDir,
}

/// How long a cluster may take to form or to fail over.
const FORM: Duration = Duration::from_secs(30);

impl RedisCluster {
    /// Starts one, or `None` (with a notice) when redis-server or redis-cli
    /// is missing outside CI (under CI, a failure).
    pub fn start() -> Option<RedisCluster> {
        for tool in ["redis-server", "redis-cli"] {
            if let Err(e) = Command::new(tool).arg("--version").output() {
                missing(Prerequisite::Redis, &format!("cannot run {tool}: {e}"));
                return None;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = RedisCluster {
            ports: Vec::new(),
            children: Vec::new(),
            _dir: dir,
        };
        for _ in 0..6 {
            cluster.spawn_node();
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_until(
            "every node says cluster_state:ok with 3 primaries and 3 replicas",
            |c| {
                c.ports.iter().all(|p| {
                    cli(*p, &["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok"))
                }) && c.replicas_in_sync() == 3
            },
        );
        Some(cluster)
    }

    /// One node on a free client port and a free bus port (Redis 7's
    /// `--cluster-port`, so the bus is not port+10000, which may be taken
    /// or out of range). Retried on fresh ports if it does not come up.
    fn spawn_node(&mut self) {
        for _ in 0..5 {
            let (port, bus) = (free_port(), free_port());
            if port == bus {
                continue;
            }
            let conf = self._dir.path().join(format!("nodes-{port}.conf"));
            let mut child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-port", &bus.to_string()])
                .arg("--cluster-config-file")
                .arg(&conf)
                .args(["--cluster-node-timeout", "1000"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(["--loglevel", "warning"])
                .arg("--dir")
                .arg(self._dir.path())
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server starts");
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut up = false;
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if cli(port, &["PING"]).is_some_and(|r| r.trim() == "PONG") {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if up {
                self.ports.push(port);
                self.children.push((port, child));
                return;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("a cluster node did not start on five pairs of free ports");
    }

    /// Primaries whose replica is attached and in sync.
    fn replicas_in_sync(&self) -> usize {
        self.ports
            .iter()
            .filter_map(|p| cli(*p, &["INFO", "replication"]))
            .filter(|i| i.contains("role:master"))
            .filter(|i| i.contains("connected_slaves:1") && i.contains("state=online"))
            .count()
    }

    fn wait_until(&self, what: &str, cond: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + FORM;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster never got to: {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The client port of the primary that owns `key`'s slot.
    pub fn primary_of(&self, key: &str) -> u16 {
        self.owner_of(key)
            .unwrap_or_else(|| panic!("no healthy primary owns the slot of {key}"))
    }

    /// The healthy primary owning `key`'s slot, if one does (none while it
    /// fails over).
    fn owner_of(&self, key: &str) -> Option<u16> {
        let any = self.live_port();
        let slot: u16 = cli(any, &["CLUSTER", "KEYSLOT", key])
            .and_then(|s| s.trim().parse().ok())
            .expect("CLUSTER KEYSLOT answers");
        let nodes = cli(any, &["CLUSTER", "NODES"]).expect("CLUSTER NODES answers");
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let owns = fields[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => {
                    matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
                }
                None => range.parse::<u16>() == Ok(slot),
            });
            if owns {
                // `127.0.0.1:PORT@BUS`
                let addr = fields[1].split('@').next().unwrap_or("");
                return addr.rsplit(':').next().and_then(|p| p.parse().ok());
            }
        }
        None
    }

    /// Moves `key`'s slot, with its keys, from its primary to another
    /// primary, the way `redis-cli --cluster reshard` does: IMPORTING on
    /// the target, MIGRATING on the source, MIGRATE every key, then
    /// `SETSLOT … NODE` on every primary. Returns the new owner's port.
    pub fn move_slot_of(&self, key: &str) -> u16 {
        let from = self.primary_of(key);
        let to = self
            .children
            .iter()
            .map(|(p, _)| *p)
            .find(|p| *p != from && cli(*p, &["ROLE"]).is_some_and(|r| r.starts_with("master")))
            .expect("another primary");
        let id = |p: u16| {
            cli(p, &["CLUSTER", "MYID"])
                .map(|s| s.trim().to_owned())
                .expect("CLUSTER MYID answers")
        };
        let (from_id, to_id) = (id(from), id(to));
        let slot = cli(from, &["CLUSTER", "KEYSLOT", key])
            .map(|s| s.trim().to_owned())
            .expect("CLUSTER KEYSLOT answers");
        let ok = |p: u16, args: &[&str]| {
            let out = cli(p, args).unwrap_or_default();
            assert!(out.trim() == "OK", "{args:?} on {p}: {out}");
        };
        ok(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
        loop {
            let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]).unwrap_or_default();
            let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            ok(from, &args);
        }
        for p in self.children.iter().map(|(p, _)| *p) {
            if cli(p, &["ROLE"]).is_some_and(|r| r.starts_with("master")) {
                ok(p, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
            }
        }
        self.wait_until("every node agrees on the slot's new owner", |c| {
            c.owner_of(key) == Some(to)
        });
        to
    }

    fn live_port(&self) -> u16 {
        self.children
            .iter()
            .map(|(p, _)| *p)
            .next()
            .expect("a live node")
    }

    /// SIGKILLs the node on `port` (it is gone for good).
    pub fn kill(&mut self, port: u16) {
        if let Some(i) = self.children.iter().position(|(p, _)| *p == port) {
            let (_, mut child) = self.children.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until a primary other than `dead` owns `key`'s slot and the
    /// surviving nodes agree the cluster is whole again.
    pub fn wait_for_failover(&self, key: &str, dead: u16) {
        self.wait_until("a replica took over the dead primary's slots", |c| {
            c.children.iter().all(|(p, _)| {
                cli(*p, &["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok"))
            }) && c.owner_of(key).is_some_and(|p| p != dead)
        });
    }
}

impl Backplane for RedisCluster {
    fn url(&self) -> String {
        let seeds: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `redis-cli -p PORT args...`'s output, if it ran and succeeded.
fn cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
