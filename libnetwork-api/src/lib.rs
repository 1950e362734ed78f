//! The Docker libnetwork remote-driver plugin protocol as plain serde types (no I/O), matching
//! what dockerd 20.10 sends and expects.
//!
//! dockerd talks HTTP/1.1 to the plugin's unix socket (`/run/docker/plugins/NAME.sock`), always
//! with `POST`:
//! - `/Plugin.Activate` first (legacy socket plugins only; managed plugins skip it), answered
//!   with [`activate::ActivateResponse`] listing [`NETWORK_DRIVER`] and/or [`IPAM_DRIVER`];
//! - `/NetworkDriver.<Method>` ([`driver`]) and `/IpamDriver.<Method>` ([`ipam`]).
//!
//! Requests carry `Accept: application/vnd.docker.plugins.v1.2+json` but no `Content-Type`, and
//! argument-less calls (`Plugin.Activate`, `GetCapabilities`, `GetDefaultAddressSpaces`) have an
//! empty body, so a server must not insist on either: use [`decode`]. Other bodies are one JSON
//! object followed by a newline. Errors go back as `{"Err": ".."}` for NetworkDriver but
//! `{"Error": ".."}` for IpamDriver (see the two `ErrorResponse` types).
//!
//! Field names and shapes were checked against moby's `libnetwork/drivers/remote/api`,
//! `libnetwork/ipams/remote/api` and `pkg/plugins/client.go`, and the tests decode request bodies
//! captured from a real dockerd 20.10 (`tests/fixtures/`, see its README).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

pub mod activate;
pub mod driver;
pub mod ipam;

/// `Implements` entry and URL prefix of the network driver API.
pub const NETWORK_DRIVER: &str = "NetworkDriver";
/// `Implements` entry and URL prefix of the IPAM driver API.
pub const IPAM_DRIVER: &str = "IpamDriver";

/// Decodes a request body. An empty (or whitespace-only) body gives `T::default()`, because
/// dockerd sends nothing at all for argument-less calls. Unknown fields are ignored (dockerd adds
/// fields across versions); a wrong type is an error naming the offending top-level field.
pub fn decode<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, String> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Ok(T::default()),
        // serde's derived structs would also accept a JSON array (fields by position).
        Some(b'{') => {}
        Some(_) => return Err("malformed JSON request body: expected a JSON object".into()),
    }
    serde_json::from_slice(body).map_err(|e| {
        format!(
            "malformed JSON request body: {}",
            culprit::<T>(body).unwrap_or_else(|| e.to_string())
        )
    })
}

/// serde_json's type errors don't say which field failed. All our request fields default when
/// absent, so decoding each top-level member on its own pinpoints the one that breaks.
fn culprit<T: DeserializeOwned>(body: &[u8]) -> Option<String> {
    let serde_json::Value::Object(map) = serde_json::from_slice(body).ok()? else {
        return None;
    };
    map.into_iter().find_map(|(key, value)| {
        let single = serde_json::Value::Object([(key.clone(), value)].into_iter().collect());
        serde_json::from_value::<T>(single)
            .err()
            .map(|e| format!("field `{key}`: {e}"))
    })
}

/// Go marshals nil maps and slices as `null` (e.g. `"IPv6Data": null`, `"Options": null`);
/// read that as the empty value instead of failing.
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{CreateNetworkRequest, JoinRequest};

    #[test]
    fn empty_body_is_default() {
        assert_eq!(
            decode::<CreateNetworkRequest>(b"").unwrap(),
            CreateNetworkRequest::default()
        );
        assert_eq!(
            decode::<JoinRequest>(b" \n").unwrap(),
            JoinRequest::default()
        );
    }

    #[test]
    fn unknown_fields_ignored() {
        let r: JoinRequest = decode(br#"{"NetworkID":"n","FutureField":[1,2]}"#).unwrap();
        assert_eq!(r.network_id, "n");
    }

    #[test]
    fn wrong_type_names_field() {
        let e = decode::<JoinRequest>(br#"{"NetworkID":"n","SandboxKey":5}"#).unwrap_err();
        assert!(
            e.starts_with("malformed JSON request body: field `SandboxKey`"),
            "{e}"
        );
        assert!(e.contains("expected a string"), "{e}");
        let e = decode::<CreateNetworkRequest>(br#"{"IPv4Data":[{"Pool":1}]}"#).unwrap_err();
        assert!(e.contains("field `IPv4Data`"), "{e}");
    }

    #[test]
    fn syntax_error_reported() {
        let e = decode::<JoinRequest>(b"{\"NetworkID\":").unwrap_err();
        assert!(
            e.starts_with("malformed JSON request body: EOF while parsing"),
            "{e}"
        );
        let e = decode::<JoinRequest>(b"[]").unwrap_err();
        assert_eq!(e, "malformed JSON request body: expected a JSON object");
    }
}
