//! `POST /NetworkDriver.<Method>` requests and responses (moby `libnetwork/drivers/remote/api`).
//!
//! Methods and their types:
//! `GetCapabilities` (empty body) -> [`CapabilitiesResponse`];
//! `CreateNetwork` [`CreateNetworkRequest`], `DeleteNetwork` [`DeleteNetworkRequest`];
//! `AllocateNetwork` [`AllocateNetworkRequest`] -> [`AllocateNetworkResponse`] and
//! `FreeNetwork` [`FreeNetworkRequest`] (swarm manager, global-scope drivers only);
//! `CreateEndpoint` [`CreateEndpointRequest`] -> [`CreateEndpointResponse`];
//! `EndpointOperInfo` [`EndpointOperInfoRequest`] -> [`EndpointOperInfoResponse`];
//! `DeleteEndpoint` [`DeleteEndpointRequest`]; `Join` [`JoinRequest`] -> [`JoinResponse`];
//! `Leave` [`LeaveRequest`]; `ProgramExternalConnectivity` /
//! `RevokeExternalConnectivity` (only when [`JoinResponse`] set a gateway);
//! `DiscoverNew` / `DiscoverDelete` [`DiscoveryNotification`] (ConnectivityScope "global").
//! Methods without a response type here answer `{}`; any may fail with [`ErrorResponse`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::null_as_default;

pub const SCOPE_LOCAL: &str = "local";
pub const SCOPE_GLOBAL: &str = "global";

/// Top-level `CreateNetwork` option holding the user's `-o key=value` map.
pub const OPT_GENERIC: &str = "com.docker.network.generic";
/// Top-level boolean option: `--ipv6`.
pub const OPT_ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
/// Top-level boolean option: `--internal` (absent when false).
pub const OPT_INTERNAL: &str = "com.docker.network.internal";
/// Generic option conventionally carrying the MTU (`-o com.docker.network.driver.mtu=1400`).
pub const OPT_MTU: &str = "com.docker.network.driver.mtu";

fn is_empty(s: &str) -> bool {
    s.is_empty()
}

/// `GetCapabilities`. dockerd rejects a Scope other than "local"/"global"; an empty
/// ConnectivityScope means "same as Scope". A legacy socket plugin must say "local" to be usable
/// on a swarm node; "global" connectivity is what gets `DiscoverNew`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CapabilitiesResponse {
    #[serde(rename = "Scope")]
    pub scope: String,
    #[serde(rename = "ConnectivityScope")]
    pub connectivity_scope: String,
}

/// One address pool of a network. `Pool`, `Gateway` and the aux addresses are all CIDR strings
/// (`"10.213.0.1/24"`, not a plain IP). `AddressSpace` is "" in swarm's `AllocateNetwork`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IpamData {
    #[serde(rename = "AddressSpace")]
    pub address_space: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "Gateway")]
    pub gateway: String,
    /// `--aux-address name=ip`; dockerd omits the key when there are none.
    #[serde(rename = "AuxAddresses", deserialize_with = "null_as_default")]
    pub aux_addresses: BTreeMap<String, String>,
}

/// `CreateNetwork`: sent on every node where the network is used (in swarm: lazily, when a
/// container there first needs it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Mixed JSON types: e.g. `"com.docker.network.enable_ipv6": false` and
    /// `"com.docker.network.generic": {"foo": "bar"}`; see [`Self::generic_options`].
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, Value>,
    #[serde(rename = "IPv4Data", deserialize_with = "null_as_default")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", deserialize_with = "null_as_default")]
    pub ipv6_data: Vec<IpamData>,
}

impl CreateNetworkRequest {
    /// The user's `-o key=value` options, nested by dockerd under [`OPT_GENERIC`]. In swarm these
    /// are whatever `AllocateNetwork` returned, not the user's originals. dockerd sends strings,
    /// but numbers and bools are accepted too (as their JSON text); other types are an error.
    pub fn generic_options(&self) -> Result<BTreeMap<String, String>, String> {
        let generic = match self.options.get(OPT_GENERIC) {
            None | Some(Value::Null) => return Ok(BTreeMap::new()),
            Some(Value::Object(m)) => m,
            Some(other) => {
                return Err(format!(
                    "option {OPT_GENERIC} must be an object, got {other}"
                ))
            }
        };
        generic
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                Value::Number(_) | Value::Bool(_) => Ok((k.clone(), v.to_string())),
                _ => Err(format!(
                    "option {k:?} must be a string, number or bool, got {v}"
                )),
            })
            .collect()
    }

    /// A boolean top-level option such as [`OPT_ENABLE_IPV6`] or [`OPT_INTERNAL`]: JSON bool or a
    /// string Go's `strconv.ParseBool` would read as true. Absent or anything else is false.
    pub fn flag(&self, key: &str) -> bool {
        match self.options.get(key) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => {
                matches!(s.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True")
            }
            _ => false,
        }
    }
}

/// `AllocateNetwork`: swarm manager only, for global-scope drivers. Options here are the user's
/// `-o` map, flat and all strings; `IPv6Data` arrives as `null` when there is none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AllocateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "IPv4Data", deserialize_with = "null_as_default")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", deserialize_with = "null_as_default")]
    pub ipv6_data: Vec<IpamData>,
}

/// Exactly these options (not the request's) reach every node's `CreateNetwork` under
/// [`OPT_GENERIC`]: echo the request's options back plus whatever was allocated (e.g. a VNI).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AllocateNetworkResponse {
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeleteNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FreeNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// Addresses are CIDR strings (`"10.213.0.2/24"`); dockerd sends "" for unset fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointInterface {
    #[serde(rename = "Address", skip_serializing_if = "is_empty")]
    pub address: String,
    #[serde(rename = "AddressIPv6", skip_serializing_if = "is_empty")]
    pub address_ipv6: String,
    #[serde(rename = "MacAddress", skip_serializing_if = "is_empty")]
    pub mac_address: String,
}

/// `CreateEndpoint`. Options include `com.docker.network.endpoint.exposedports` and
/// `com.docker.network.portmap` (arrays of objects, often empty).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Interface")]
    pub interface: Option<EndpointInterface>,
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, Value>,
}

/// Leave `interface` None when the request already had the addresses: dockerd fails the
/// endpoint ("driver modified interface address") if the driver sets one that was given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CreateEndpointResponse {
    #[serde(rename = "Interface", skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointOperInfoRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

/// Free-form map shown by `docker inspect`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EndpointOperInfoResponse {
    #[serde(rename = "Value", deserialize_with = "null_as_default")]
    pub value: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeleteEndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

/// `Join`: `SandboxKey` is the container's netns path, e.g. `/var/run/docker/netns/<12 hex>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JoinRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "SandboxKey")]
    pub sandbox_key: String,
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, Value>,
}

/// `Gateway`/`GatewayIPv6` are plain IPs (not CIDRs). With no gateway dockerd gives the container
/// a second interface on `docker_gwbridge` (unless `DisableGatewayService`); with one, it calls
/// `ProgramExternalConnectivity` on this driver instead.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct JoinResponse {
    #[serde(rename = "InterfaceName")]
    pub interface_name: InterfaceName,
    #[serde(rename = "Gateway", skip_serializing_if = "is_empty")]
    pub gateway: String,
    #[serde(rename = "GatewayIPv6", skip_serializing_if = "is_empty")]
    pub gateway_ipv6: String,
    #[serde(
        rename = "StaticRoutes",
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub static_routes: Vec<StaticRoute>,
    #[serde(rename = "DisableGatewayService")]
    pub disable_gateway_service: bool,
}

/// The host-side interface (`SrcName`, must exist) that dockerd moves into the sandbox and
/// renames to `DstPrefix` + index (e.g. "eth" -> eth0). Go's `DstName` is ignored by dockerd.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InterfaceName {
    #[serde(rename = "SrcName")]
    pub src_name: String,
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: String,
}

/// `RouteType` of a [`StaticRoute`]: via `NextHop`.
pub const ROUTE_NEXT_HOP: i32 = 0;
/// `RouteType` of a [`StaticRoute`]: directly connected (no `NextHop`).
pub const ROUTE_CONNECTED: i32 = 1;

/// `Destination` is a CIDR, `NextHop` a plain IP.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StaticRoute {
    #[serde(rename = "Destination")]
    pub destination: String,
    #[serde(rename = "RouteType")]
    pub route_type: i32,
    #[serde(rename = "NextHop")]
    pub next_hop: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaveRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

/// `DiscoveryType` of a node announcement; its data is [`NodeDiscoveryData`].
pub const DISCOVERY_NODE: i32 = 1;
/// `DiscoveryType` of encryption keys (dockerd 20.10 forwards only node discovery to plugins).
pub const DISCOVERY_ENCRYPTION_KEYS: i32 = 2;

/// `DiscoverNew` / `DiscoverDelete`, sent to drivers whose ConnectivityScope is "global" once the
/// daemon is in a swarm (including one for itself, with `"Self":true`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiscoveryNotification {
    #[serde(rename = "DiscoveryType")]
    pub discovery_type: i32,
    #[serde(rename = "DiscoveryData")]
    pub discovery_data: Value,
}

impl DiscoveryNotification {
    /// The node data, for [`DISCOVERY_NODE`] notifications only.
    pub fn node(&self) -> Option<Result<NodeDiscoveryData, String>> {
        (self.discovery_type == DISCOVERY_NODE).then(|| {
            NodeDiscoveryData::deserialize(&self.discovery_data)
                .map_err(|e| format!("bad node discovery data: {e}"))
        })
    }
}

/// Plain IPs of a swarm node (`Self` with a capital S is the local node).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeDiscoveryData {
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "BindAddress")]
    pub bind_address: String,
    #[serde(rename = "Self")]
    pub self_node: bool,
}

/// Options are the endpoint's (exposed ports and port map), as in [`JoinRequest`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProgramExternalConnectivityRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RevokeExternalConnectivityRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

/// NetworkDriver failure: `{"Err":"..."}` (dockerd reports it as "remote: ..."). Works with
/// HTTP 200 or an error status alike.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ErrorResponse {
    #[serde(rename = "Err")]
    pub err: String,
}

impl ErrorResponse {
    pub fn new(err: impl Into<String>) -> Self {
        Self { err: err.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode;
    use serde_json::json;

    fn to_json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn nulls_are_empty() {
        let r: CreateNetworkRequest =
            decode(br#"{"NetworkID":"n","Options":null,"IPv4Data":null,"IPv6Data":null}"#).unwrap();
        assert!(r.options.is_empty() && r.ipv4_data.is_empty() && r.ipv6_data.is_empty());
        let r: AllocateNetworkRequest =
            decode(br#"{"NetworkID":"n","Options":null,"IPv6Data":null}"#).unwrap();
        assert!(r.options.is_empty() && r.ipv6_data.is_empty());
        let r: CreateEndpointRequest = decode(br#"{"Interface":null,"Options":null}"#).unwrap();
        assert_eq!(r.interface, None);
        let r: IpamData = serde_json::from_str(r#"{"AuxAddresses":null}"#).unwrap();
        assert!(r.aux_addresses.is_empty());
    }

    #[test]
    fn generic_options_mixed_types() {
        let r = CreateNetworkRequest {
            options: [(
                OPT_GENERIC.to_string(),
                json!({"a": "x", "mtu": 1400, "b": true}),
            )]
            .into(),
            ..Default::default()
        };
        let g = r.generic_options().unwrap();
        assert_eq!(
            (g["a"].as_str(), g["mtu"].as_str(), g["b"].as_str()),
            ("x", "1400", "true")
        );

        let bad = CreateNetworkRequest {
            options: [(
                OPT_GENERIC.to_string(),
                json!({"ok": "x", "nested": {"y": 1}}),
            )]
            .into(),
            ..Default::default()
        };
        let e = bad.generic_options().unwrap_err();
        assert!(e.contains("\"nested\""), "{e}");
        assert!(CreateNetworkRequest::default()
            .generic_options()
            .unwrap()
            .is_empty());
    }

    #[test]
    fn flags() {
        let r = CreateNetworkRequest {
            options: [
                (OPT_ENABLE_IPV6.to_string(), json!(true)),
                (OPT_INTERNAL.to_string(), json!("true")),
                ("x".to_string(), json!("false")),
                ("y".to_string(), json!(1)),
            ]
            .into(),
            ..Default::default()
        };
        assert!(r.flag(OPT_ENABLE_IPV6) && r.flag(OPT_INTERNAL));
        assert!(!r.flag("x") && !r.flag("y") && !r.flag("absent"));
    }

    #[test]
    fn capabilities_json() {
        let c = CapabilitiesResponse {
            scope: SCOPE_LOCAL.into(),
            connectivity_scope: SCOPE_GLOBAL.into(),
        };
        assert_eq!(
            to_json(&c),
            r#"{"Scope":"local","ConnectivityScope":"global"}"#
        );
    }

    #[test]
    fn join_response_json() {
        let mut r = JoinResponse {
            interface_name: InterfaceName {
                src_name: "veth1".into(),
                dst_prefix: "eth".into(),
            },
            ..Default::default()
        };
        assert_eq!(
            to_json(&r),
            r#"{"InterfaceName":{"SrcName":"veth1","DstPrefix":"eth"},"DisableGatewayService":false}"#
        );
        r.gateway = "10.0.0.1".into();
        r.gateway_ipv6 = "fd00::1".into();
        r.static_routes = vec![StaticRoute {
            destination: "10.1.0.0/16".into(),
            route_type: ROUTE_NEXT_HOP,
            next_hop: "10.0.0.2".into(),
        }];
        r.disable_gateway_service = true;
        assert_eq!(
            to_json(&r),
            concat!(
                r#"{"InterfaceName":{"SrcName":"veth1","DstPrefix":"eth"},"Gateway":"10.0.0.1","GatewayIPv6":"fd00::1","#,
                r#""StaticRoutes":[{"Destination":"10.1.0.0/16","RouteType":0,"NextHop":"10.0.0.2"}],"#,
                r#""DisableGatewayService":true}"#
            )
        );
        assert_eq!(
            serde_json::from_str::<JoinResponse>(&to_json(&r)).unwrap(),
            r
        );
    }

    #[test]
    fn create_endpoint_response_json() {
        assert_eq!(to_json(&CreateEndpointResponse::default()), "{}");
        let r = CreateEndpointResponse {
            interface: Some(EndpointInterface {
                mac_address: "02:42:0a:00:00:02".into(),
                ..Default::default()
            }),
        };
        assert_eq!(
            to_json(&r),
            r#"{"Interface":{"MacAddress":"02:42:0a:00:00:02"}}"#
        );
    }

    #[test]
    fn other_responses_json() {
        assert_eq!(to_json(&ErrorResponse::new("x")), r#"{"Err":"x"}"#);
        let a = AllocateNetworkResponse {
            options: [("vni".to_string(), "42".to_string())].into(),
        };
        assert_eq!(to_json(&a), r#"{"Options":{"vni":"42"}}"#);
        let i = EndpointOperInfoResponse {
            value: [("k".to_string(), json!(1))].into(),
        };
        assert_eq!(to_json(&i), r#"{"Value":{"k":1}}"#);
    }

    #[test]
    fn discovery_self() {
        let n: DiscoveryNotification = decode(
            br#"{"DiscoveryType":1,"DiscoveryData":{"Address":"10.99.0.1","BindAddress":"10.99.0.1","Self":true}}"#,
        )
        .unwrap();
        let d = n.node().unwrap().unwrap();
        assert_eq!(
            d,
            NodeDiscoveryData {
                address: "10.99.0.1".into(),
                bind_address: "10.99.0.1".into(),
                self_node: true
            }
        );
        let keys = DiscoveryNotification {
            discovery_type: DISCOVERY_ENCRYPTION_KEYS,
            discovery_data: json!({}),
        };
        assert!(keys.node().is_none());
        let bad = DiscoveryNotification {
            discovery_type: DISCOVERY_NODE,
            discovery_data: json!({"Self": "yes"}),
        };
        assert!(bad.node().unwrap().is_err());
    }
}
