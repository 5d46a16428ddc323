//! `heartbeater.v1.TopicService`: the publisher's end of subscription streams.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::hub::{Refusal, Topics};
use super::types::validate_topic;
use crate::grpc::access::{Access, Gate};
use crate::grpc::connection::ConnInfo;
use crate::grpc::proto::topic_service_server::TopicService;
use crate::grpc::proto::{FrameKind, TopicFrame};
use crate::log_limit::SharedLogLimiter;

/// The gRPC face of a node's topics.
pub(crate) struct TopicGrpc {
    topics: Arc<Topics>,
    gate: Gate,
    /// Refused claims are logged, but a client repeating one must not be
    /// able to fill the log.
    refused_log: SharedLogLimiter,
}

impl TopicGrpc {
    pub(crate) fn new(topics: Arc<Topics>, gate: Gate) -> Self {
        Self {
            topics,
            gate,
            refused_log: SharedLogLimiter::default(),
        }
    }
}

fn kind_of(frame: &TopicFrame) -> FrameKind {
    frame
        .header
        .as_ref()
        .and_then(|h| FrameKind::try_from(h.kind).ok())
        .unwrap_or(FrameKind::Unspecified)
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<TopicFrame, Status>> + Send>>;

#[tonic::async_trait]
impl TopicService for TopicGrpc {
    type SubscribeStream = FrameStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<TopicFrame>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.gate.check(request.metadata(), Access::Read)?;
        let info = request
            .extensions()
            .get::<ConnInfo>()
            .cloned()
            .ok_or_else(|| Status::internal("no connection information"))?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before its SUBSCRIBE frame"))?;
        if kind_of(&first) != FrameKind::Subscribe {
            return Err(Status::invalid_argument(
                "the first frame must be SUBSCRIBE",
            ));
        }
        let header = first.header.unwrap_or_default();
        validate_topic(&header.topic).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let instance = Uuid::parse_str(&header.instance_id).map_err(|_| {
            Status::invalid_argument(format!(
                "invalid instance_id {:?}: must be the subscribing node's UUID",
                header.instance_id
            ))
        })?;
        let hub = self.topics.get(&header.topic).ok_or_else(|| {
            Status::not_found(format!(
                "this node does not publish topic {:?}",
                header.topic
            ))
        })?;

        let (conn, frames) = hub
            .add_subscriber(instance, info.client)
            .map_err(|refusal| match refusal {
                Refusal::TopicFull => Status::resource_exhausted(format!(
                    "topic {:?} has {} subscriptions, its most; try again later",
                    header.topic,
                    crate::topic::hub::MAX_SUBSCRIPTIONS
                )),
                Refusal::Unpublished => Status::not_found(format!(
                    "this node does not publish topic {:?}",
                    header.topic
                )),
                Refusal::NodeFull => Status::resource_exhausted(format!(
                    "this node serves {} subscriptions, its most; try again later",
                    crate::topic::hub::MAX_NODE_SUBSCRIPTIONS
                )),
                Refusal::Claimed { holder } => {
                    if let Some(suppressed) = self.refused_log.due() {
                        tracing::warn!(topic = %header.topic, %instance, %holder,
                            claimant = %info.client, client = ?info.tcp.remote_addr, suppressed,
                            "refused a subscription: its instance id is subscribed from another client");
                    }
                    Status::permission_denied(format!(
                        "instance {instance} is subscribed to {:?} from another client; \
                         an instance id belongs to one client at a time",
                        header.topic
                    ))
                }
            })?;
        tokio::spawn(async move {
            // Answers are attributed to the instance that subscribed, not to
            // whatever a frame's header claims.
            while let Ok(Some(frame)) = inbound.message().await {
                let request_id = frame.header.as_ref().map_or(0, |h| h.request_id);
                match kind_of(&frame) {
                    FrameKind::HeartbeatResponse => {
                        hub.on_heartbeat_response(conn, request_id, instance)
                    }
                    FrameKind::Response => {
                        hub.on_response(conn, request_id, instance, frame.payload)
                    }
                    _ => {}
                }
            }
            hub.remove_subscriber(conn);
        });
        Ok(Response::new(Box::pin(frames)))
    }
}
