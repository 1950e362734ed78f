//! `POST /IpamDriver.<Method>` requests and responses (moby `libnetwork/ipams/remote/api`).
//!
//! `GetCapabilities` (empty body) -> [`CapabilitiesResponse`];
//! `GetDefaultAddressSpaces` (empty body) -> [`AddressSpacesResponse`];
//! `RequestPool` [`RequestPoolRequest`] -> [`RequestPoolResponse`];
//! `ReleasePool` [`ReleasePoolRequest`]; `RequestAddress` [`RequestAddressRequest`] ->
//! [`RequestAddressResponse`]; `ReleaseAddress` [`ReleaseAddressRequest`].
//! Methods without a response type answer `{}`; any may fail with [`ErrorResponse`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::null_as_default;

/// `RequestAddress` option key saying what the address is for ...
pub const OPT_ADDRESS_TYPE: &str = "RequestAddressType";
/// ... and its value when dockerd asks for the network's gateway.
pub const ADDRESS_TYPE_GATEWAY: &str = "com.docker.network.gateway";

/// IpamDriver failure: `{"Error":"..."}` ("Error", not NetworkDriver's "Err"). Send it with
/// HTTP 200: on an error status dockerd's plugin client only looks for "Err" and would show the
/// raw body instead.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorResponse {
    #[serde(rename = "Error")]
    pub error: String,
}

impl ErrorResponse {
    pub fn new(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CapabilitiesResponse {
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    /// Replay pool and address requests for existing networks when dockerd restarts.
    #[serde(rename = "RequiresRequestReplay")]
    pub requires_request_replay: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AddressSpacesResponse {
    #[serde(rename = "LocalDefaultAddressSpace")]
    pub local_default_address_space: String,
    #[serde(rename = "GlobalDefaultAddressSpace")]
    pub global_default_address_space: String,
}

/// `Pool` is the user's `--subnet` CIDR, or "" to let the driver choose; `Options` are the
/// `--ipam-opt` pairs. One request per subnet (v4 and v6 separately).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestPoolRequest {
    #[serde(rename = "AddressSpace")]
    pub address_space: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "SubPool")]
    pub sub_pool: String,
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "V6")]
    pub v6: bool,
}

/// `Pool` must be a CIDR.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestPoolResponse {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "Data", deserialize_with = "null_as_default")]
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReleasePoolRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

/// `Address` is a plain IP or "" for any; `Options` is often `null` (read as empty) and carries
/// [`OPT_ADDRESS_TYPE`] for the gateway.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, String>,
}

/// `Address` must be a CIDR (`"10.0.0.2/24"`), unlike the plain IP in the request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestAddressResponse {
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Data", deserialize_with = "null_as_default")]
    pub data: BTreeMap<String, String>,
}

/// `Address` is a plain IP.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReleaseAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Address")]
    pub address: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn responses_json() {
        assert_eq!(to_json(&ErrorResponse::new("x")), r#"{"Error":"x"}"#);
        assert_eq!(
            to_json(&CapabilitiesResponse::default()),
            r#"{"RequiresMACAddress":false,"RequiresRequestReplay":false}"#
        );
        let s = AddressSpacesResponse {
            local_default_address_space: "L".into(),
            global_default_address_space: "G".into(),
        };
        assert_eq!(
            to_json(&s),
            r#"{"LocalDefaultAddressSpace":"L","GlobalDefaultAddressSpace":"G"}"#
        );
        let p = RequestPoolResponse {
            pool_id: "p".into(),
            pool: "10.0.0.0/24".into(),
            data: BTreeMap::new(),
        };
        assert_eq!(
            to_json(&p),
            r#"{"PoolID":"p","Pool":"10.0.0.0/24","Data":{}}"#
        );
        let a = RequestAddressResponse {
            address: "10.0.0.2/24".into(),
            data: BTreeMap::new(),
        };
        assert_eq!(to_json(&a), r#"{"Address":"10.0.0.2/24","Data":{}}"#);
    }

    #[test]
    fn null_options() {
        let r: RequestAddressRequest =
            crate::decode(br#"{"PoolID":"p","Address":"","Options":null}"#).unwrap();
        assert!(r.options.is_empty());
    }
}
