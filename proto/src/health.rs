//! `grpc.health.v1` on its own port, for the roles that serve no other gRPC (actors and
//! evaluators), so that an orchestrator probes every role the same way: a Kubernetes `grpc`
//! probe, `grpc_health_probe`, or `dsm up`. The roles that do serve gRPC (coordinator, replay
//! shards, the learner's checkpoint store) answer health on their service port instead.
//!
//! What SERVING means here is liveness: the process is up and its runtime answers. Whether an
//! actor's data arrives is for the metrics and alerts to say (`deploy/prometheus/alerts.yml`).

use std::net::SocketAddr;

/// Binds `addr` (port 0 picks a free port) and serves the overall health status, SERVING, in a
/// task of the current runtime until the process exits; returns the bound address.
pub async fn serve(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await {
            eprintln!("warning: the health service at {bound} stopped: {e}");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    #[tokio::test]
    async fn answers_serving_for_the_whole_server() {
        let bound = super::serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{bound}")).unwrap().connect().await.unwrap();
        let mut client = HealthClient::new(channel);
        let answer = client.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
        assert_eq!(answer.status, ServingStatus::Serving as i32);
        let unknown = client.check(HealthCheckRequest { service: "dsm.v1.Nothing".into() }).await.unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);
    }
}
