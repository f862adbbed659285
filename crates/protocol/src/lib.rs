//! The skerry host<->guest agent API: protobuf messages and the ttrpc `Agent` service.
//!
//! Shared by the host runtime (client) and `skerry-agent` (server) so both sides
//! are compiled from one `.proto` file.
#![forbid(unsafe_code)]

/// Protobuf messages of `proto/agent.proto`.
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    non_upper_case_globals,
    non_camel_case_types,
    unused_qualifications,
    rust_2018_idioms,
    unused
)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// ttrpc client and server stubs of the `Agent` service.
#[allow(
    clippy::all,
    clippy::pedantic,
    missing_docs,
    non_upper_case_globals,
    non_camel_case_types,
    unused_qualifications,
    rust_2018_idioms,
    unused
)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

pub use agent::*;
pub use agent_ttrpc::{create_agent, Agent, AgentClient};

/// Version of this API; bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Guest vsock port the agent serves the API on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Host vsock port the agent connects to (and at once closes) once its API is up.
/// With QEMU the host connects to the agent only after this: vhost-device-vsock
/// loses its vring worker thread, and with it every later connection, when a host
/// connection arrives between the guest driver's set-up of the device and the
/// rings being ready.
pub const AGENT_READY_VSOCK_PORT: u32 = 1025;

/// Largest payload one `ReadStdout`/`ReadStderr` reply carries.
pub const MAX_READ_LEN: u32 = 256 * 1024;

/// Largest payload one `WriteStdin` request may carry.
pub const MAX_WRITE_LEN: usize = 1024 * 1024;

/// virtio-fs tag of the sandbox's shared directory.
pub const SHARED_FS_TAG: &str = "skerryfs";

/// A MAC address as `Interface.mac` carries it: `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

#[cfg(test)]
mod tests {
    use protobuf::Message;

    use super::*;

    #[test]
    fn create_container_round_trips_through_wire_format() {
        let mut req = CreateContainerRequest::new();
        req.container_id = "c1".into();
        req.oci_spec_json = br#"{"ociVersion":"1.0.2"}"#.to_vec();
        let bytes = req.write_to_bytes().unwrap();
        let back = CreateContainerRequest::parse_from_bytes(&bytes).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn wait_response_keeps_status_and_signal() {
        let resp = WaitProcessResponse {
            status: 137,
            signal: 9,
            ..Default::default()
        };
        let back = WaitProcessResponse::parse_from_bytes(&resp.write_to_bytes().unwrap()).unwrap();
        assert_eq!((back.status, back.signal), (137, 9));
    }

    #[test]
    fn truncated_message_is_rejected() {
        let mut req = ReadStreamRequest::new();
        req.container_id = "a-long-container-id".into();
        let bytes = req.write_to_bytes().unwrap();
        assert!(ReadStreamRequest::parse_from_bytes(&bytes[..bytes.len() - 3]).is_err());
    }
}
