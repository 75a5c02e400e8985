//! The admin HTTP listener: `/health/live`, `/health/ready`, `/metrics`, `/v1/cluster`
//! (JSON: the nodes with their listeners, the controller, partition counts) and
//! `/v1/partitions` (JSON: every partition with its replicas and leader, as this node sees
//! them).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use broker::Broker;
use tokio_util::sync::CancellationToken;

pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) {
    let app = Router::new()
        .route("/health/live", get(|| async { "live\n" }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/cluster", get(cluster))
        .route("/v1/partitions", get(partitions))
        .with_state(broker);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin listener failed");
    }
}

async fn ready(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    if broker.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn cluster(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    let me = broker.config.node_id;
    let brokers: Vec<_> = broker
        .broker_list(0)
        .into_iter()
        .map(|b| {
            serde_json::json!({
                "node": b.node,
                "rack": b.rack,
                "listeners": b.listeners.iter().map(|e| serde_json::json!({
                    "name": e.name, "host": e.host, "port": e.port,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let (mut total, mut leaderless, mut led_here) = (0, 0, 0);
    for t in broker.topics.all() {
        for p in &t.partitions {
            total += 1;
            match p.leader_id() {
                l if l < 0 => leaderless += 1,
                l if l == me => led_here += 1,
                _ => {}
            }
        }
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({
            "node": me,
            "cluster_id": broker.cluster_id(),
            "controller": broker.topics.controller_id(),
            "ready": broker.is_ready(),
            "brokers": brokers,
            "partitions": {
                "total": total,
                "leader_here": led_here,
                "without_leader": leaderless,
            },
        })
        .to_string(),
    )
}

async fn partitions(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    let mut list = Vec::new();
    for t in broker.topics.all() {
        for p in &t.partitions {
            let leader = p.leader_id();
            list.push(serde_json::json!({
                "topic": t.name,
                "partition": p.index,
                "leader": (leader >= 0).then_some(leader),
                "replicas": p.replicas,
                "isr": broker.topics.in_sync_replicas(&t, p),
                "leader_epoch": p.replica.as_ref().map(|r| r.leader_epoch()),
                "high_watermark": p.replica.as_ref().map(|r| r.high_watermark()),
            }));
        }
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "node": broker.config.node_id, "partitions": list }).to_string(),
    )
}

async fn metrics(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    broker.refresh_partition_metrics();
    broker.refresh_group_metrics();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        broker.metrics.render(),
    )
}
