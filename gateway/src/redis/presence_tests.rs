//! Tests of [`crate::redis::RedisPresence`] against a real redis-server.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

use crate::backplane::BackplaneError;
use crate::presence::{Member, NodeInfo, Presence, RefreshBatch, UserConn};
use crate::redis::testutil::{eventually, CollectSink, RedisServer, TestResult};
use crate::redis::RedisBackends;

async fn backends(
    server: &RedisServer,
    prefix: &str,
    node: &str,
    ttl: Duration,
) -> Result<RedisBackends, BackplaneError> {
    let mut settings = server.settings(prefix, node);
    settings.presence_ttl = ttl;
    RedisBackends::connect(settings, Arc::new(CollectSink::default())).await
}

fn member(conn: &str, node: &str) -> Result<Member, serde_json::Error> {
    Ok(Member {
        user: format!("user-{conn}"),
        conn: conn.into(),
        node: node.into(),
        info: Some(RawValue::from_string(r#"{"name":"A/B"}"#.into())?),
    })
}

fn conns(members: &[Member]) -> Vec<String> {
    let mut v: Vec<String> = members.iter().map(|m| m.conn.clone()).collect();
    v.sort();
    v
}

#[tokio::test]
async fn join_members_leave() -> TestResult {
    let server = RedisServer::start().await?;
    let b = backends(&server, &server.prefix(), "n1", Duration::from_secs(60)).await?;
    let p = &b.presence;
    p.join("room", &member("c1", "n1")?).await?;
    p.join("room", &member("c2", "n2")?).await?;
    p.join("room", &member("c2", "n2")?).await?;
    let got = p.members("room").await?;
    assert_eq!(conns(&got), ["c1", "c2"]);
    let c1 = got.iter().find(|m| m.conn == "c1").ok_or("c1 missing")?;
    assert_eq!(c1.info.as_ref().map(|i| i.get()), Some(r#"{"name":"A/B"}"#));
    assert_eq!(c1.user, "user-c1");
    assert!(p.leave("room", "c1").await?);
    assert!(!p.leave("room", "c1").await?);
    assert_eq!(conns(&p.members("room").await?), ["c2"]);
    assert!(p.members("empty").await?.is_empty());
    assert!(p.take_expired("room").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn expired_members_are_taken_exactly_once() -> TestResult {
    let server = RedisServer::start().await?;
    let prefix = server.prefix();
    let ttl = Duration::from_millis(300);
    let a = backends(&server, &prefix, "a", ttl).await?;
    let b = backends(&server, &prefix, "b", ttl).await?;
    for i in 0..50 {
        a.presence
            .join("room", &member(&format!("c{i:02}"), "a")?)
            .await?;
    }
    assert_eq!(a.presence.members("room").await?.len(), 50);
    // Readers stop seeing them once the TTL passes.
    let mut gone = false;
    for _ in 0..200 {
        if a.presence.members("room").await?.is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "members did not expire");
    let (x, y) = tokio::join!(
        a.presence.take_expired("room"),
        b.presence.take_expired("room")
    );
    let mut all = x?;
    all.extend(y?);
    assert_eq!(all.len(), 50);
    let expected: Vec<String> = (0..50).map(|i| format!("c{i:02}")).collect();
    assert_eq!(conns(&all), expected);
    assert!(a.presence.take_expired("room").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn refresh_extends_but_does_not_resurrect() -> TestResult {
    let server = RedisServer::start().await?;
    let prefix = server.prefix();
    let b = backends(&server, &prefix, "n1", Duration::from_secs(5)).await?;
    let p = &b.presence;
    let m = member("c1", "n1")?;
    let u = UserConn {
        conn: "c1".into(),
        node: "n1".into(),
    };
    p.join("room", &m).await?;
    p.add_user_conn("alice", &u).await?;
    let mut conn = server.conn().await?;
    let key = format!("{prefix}:pres-exp:{{room}}");
    let score = |conn: &mut ::redis::aio::MultiplexedConnection| {
        let key = key.clone();
        let mut conn = conn.clone();
        async move {
            ::redis::cmd("ZSCORE")
                .arg(key)
                .arg("c1")
                .query_async::<Option<u64>>(&mut conn)
                .await
        }
    };
    let before = score(&mut conn).await?.ok_or("no score")?;
    tokio::time::sleep(Duration::from_millis(20)).await; // let the clock advance
    let batch = RefreshBatch {
        members: vec![("room".into(), m.clone())],
        user_conns: vec![("alice".into(), u.clone())],
    };
    p.refresh(&batch).await?;
    let after = score(&mut conn).await?.ok_or("no score")?;
    assert!(after > before, "{after} <= {before}");
    // A member that left is not brought back by a racing refresh.
    assert!(p.leave("room", "c1").await?);
    p.remove_user_conn("alice", "c1").await?;
    p.refresh(&batch).await?;
    assert!(p.members("room").await?.is_empty());
    assert!(p.user_conns("alice").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn refresh_rewrites_entries_after_redis_lost_them() -> TestResult {
    let mut server = RedisServer::start().await?;
    let prefix = server.prefix();
    let b = backends(&server, &prefix, "n1", Duration::from_secs(5)).await?;
    let p = &b.presence;
    let m = member("c1", "n1")?;
    let batch = RefreshBatch {
        members: vec![("room".into(), m.clone())],
        user_conns: vec![],
    };
    p.join("room", &m).await?;
    p.refresh(&batch).await?;
    server.restart().await?;
    // Redis lost everything; once the link is re-established the next
    // refresh names the batch as missing and restore writes it back.
    let mut back = false;
    for _ in 0..200 {
        if let Ok(missing) = p.refresh(&batch).await {
            assert_eq!(
                conns(
                    &missing
                        .members
                        .iter()
                        .map(|(_, m)| m.clone())
                        .collect::<Vec<_>>()
                ),
                ["c1"]
            );
            p.restore(&missing).await?;
        }
        if p.members("room")
            .await
            .map(|m| m.len() == 1)
            .unwrap_or(false)
        {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        back,
        "refresh did not restore the member after Redis lost it"
    );
    Ok(())
}

#[tokio::test]
async fn refresh_after_a_missed_ttl_rewrites() -> TestResult {
    let server = RedisServer::start().await?;
    let b = backends(&server, &server.prefix(), "n1", Duration::from_millis(300)).await?;
    let p = &b.presence;
    let m = member("c1", "n1")?;
    let batch = RefreshBatch {
        members: vec![("room".into(), m.clone())],
        user_conns: vec![],
    };
    p.join("room", &m).await?;
    p.refresh(&batch).await?;
    let mut taken = Vec::new();
    for _ in 0..200 {
        taken.extend(p.take_expired("room").await?);
        if !taken.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(conns(&taken), ["c1"]);
    // This node missed its refreshes for a whole TTL: the next refresh
    // names the taken member, and restore writes it back.
    let missing = p.refresh(&batch).await?;
    assert_eq!(missing.members.len(), 1);
    assert!(p.members("room").await?.is_empty());
    p.restore(&missing).await?;
    assert_eq!(conns(&p.members("room").await?), ["c1"]);
    Ok(())
}

#[tokio::test]
async fn user_index_and_node_registry() -> TestResult {
    let server = RedisServer::start().await?;
    let prefix = server.prefix();
    let ttl = Duration::from_millis(300);
    let a = backends(&server, &prefix, "a", Duration::from_secs(60)).await?;
    let short = backends(&server, &prefix, "b", ttl).await?;
    a.presence
        .add_user_conn(
            "alice",
            &UserConn {
                conn: "a.1.1".into(),
                node: "a".into(),
            },
        )
        .await?;
    a.presence
        .add_user_conn(
            "alice",
            &UserConn {
                conn: "c.1.1".into(),
                node: "c".into(),
            },
        )
        .await?;
    short
        .presence
        .add_user_conn(
            "alice",
            &UserConn {
                conn: "b.1.1".into(),
                node: "b".into(),
            },
        )
        .await?;
    let mut got = a.presence.user_conns("alice").await?;
    got.sort_by(|x, y| x.conn.cmp(&y.conn));
    assert_eq!(
        got.iter().map(|c| c.node.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    a.presence.remove_user_conn("alice", "c.1.1").await?;
    let mut expired = false;
    for _ in 0..200 {
        let now = a.presence.user_conns("alice").await?;
        if now
            == [UserConn {
                conn: "a.1.1".into(),
                node: "a".into(),
            }]
        {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(expired, "user index did not drop the expired connection");
    assert!(a.presence.user_conns("bob").await?.is_empty());

    let info = |id: &str| NodeInfo {
        id: id.into(),
        connections: 3,
        subscriptions: 2,
        started_at: 1,
        version: "0.1.0".into(),
    };
    a.presence.heartbeat(&info("a")).await?;
    a.presence.heartbeat(&info("c")).await?;
    short.presence.heartbeat(&info("b")).await?;
    let mut ids: Vec<String> = a
        .presence
        .nodes()
        .await?
        .into_iter()
        .map(|n| n.id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["a", "b", "c"]);
    a.presence.remove_node("c").await?;
    let mut only_a = false;
    for _ in 0..200 {
        let ids: Vec<String> = a
            .presence
            .nodes()
            .await?
            .into_iter()
            .map(|n| n.id)
            .collect();
        if ids == ["a"] {
            only_a = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(only_a, "node registry did not drop the expired node");
    Ok(())
}

#[tokio::test]
async fn commands_after_a_redis_restart_use_fresh_connections() -> TestResult {
    use crate::backplane::Backplane;
    let mut server = RedisServer::start().await?;
    let prefix = server.prefix();
    let b = backends(&server, &prefix, "n1", Duration::from_secs(60)).await?;
    let p = &b.presence;
    // Put a connection in the pool.
    p.join("room", &member("c1", "n1")?).await?;
    let before = b.backplane.generation();
    server.restart().await?;
    let up = eventually(Duration::from_secs(5), || {
        b.backplane.generation() != before && b.backplane.is_healthy()
    })
    .await;
    assert!(up, "the pub/sub link did not come back");
    // The pooled connection was made before the link reconnected: the pool
    // makes a fresh one rather than hand out the dead one. (Without that
    // check the liveness probe also fails on the dead connection and the
    // link turns unhealthy again for a probe interval: this test then took
    // 2.1 s instead of 0.1 s.)
    assert!(p.members("room").await?.is_empty(), "Redis restarted empty");
    p.join("room", &member("c2", "n1")?).await?;
    assert_eq!(conns(&p.members("room").await?), ["c2"]);
    Ok(())
}
