//! `POST /Plugin.Activate` (empty request body).

use serde::{Deserialize, Serialize};

/// Which APIs the plugin serves, e.g. `{"Implements":["NetworkDriver","IpamDriver"]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActivateResponse {
    #[serde(
        rename = "Implements",
        default,
        deserialize_with = "crate::null_as_default"
    )]
    pub implements: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes() {
        let r = ActivateResponse {
            implements: vec![crate::NETWORK_DRIVER.into(), crate::IPAM_DRIVER.into()],
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"Implements":["NetworkDriver","IpamDriver"]}"#
        );
    }
}
