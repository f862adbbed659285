//! Task events published to containerd.

use containerd_shim::{
    protos::{protobuf::MessageDyn, ttrpc::context::Context},
    publisher::RemotePublisher,
};
use tracing::warn;

/// Publishes events of one containerd namespace.
pub struct Events {
    publisher: RemotePublisher,
    namespace: String,
}

impl Events {
    /// Events of `namespace`, sent through `publisher`.
    pub fn new(publisher: RemotePublisher, namespace: String) -> Self {
        Self {
            publisher,
            namespace,
        }
    }

    /// Queues `event` under `topic`; a failure is logged (containerd also
    /// learns the state through State and Wait).
    pub async fn send(&self, topic: &str, event: impl MessageDyn) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, Box::new(event))
            .await
        {
            warn!(topic, error = %e, "publishing event");
        }
    }
}
