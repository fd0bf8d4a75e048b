//! Header names the config names (`identity.header`, `identity.plan_header`,
//! `streams.stream_id_header`), parsed once when the file loads: a name that is not a
//! header, or one a proxy consumes or rewrites (`Host`, hop-by-hop, framing), is refused
//! there, naming the key. The spelling is kept for the headers the proxy writes itself.

use http::HeaderName;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Headers a proxy consumes or rewrites, which therefore cannot carry an id.
const NOT_END_TO_END: [&str; 12] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "proxy-authorization",
    "proxy-authenticate",
];

/// An end-to-end header name, and how the config spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    name: HeaderName,
    spelling: String,
}

impl Header {
    pub fn parse(spelling: &str) -> Result<Self, &'static str> {
        let name = HeaderName::from_bytes(spelling.as_bytes())
            .map_err(|_| "not a valid HTTP header name")?;
        if NOT_END_TO_END.contains(&name.as_str()) {
            return Err(
                "must be an end-to-end header (not Host, a hop-by-hop or a framing header)",
            );
        }
        Ok(Self {
            name,
            spelling: spelling.to_owned(),
        })
    }

    /// A default: `lower` must be `spelling` in lower case (checked when first used).
    pub(super) fn fixed(lower: &'static str, spelling: &str) -> Self {
        Self {
            name: HeaderName::from_static(lower),
            spelling: spelling.to_owned(),
        }
    }

    pub fn name(&self) -> &HeaderName {
        &self.name
    }

    /// As the config spells it (what the proxy writes on the wire).
    pub fn spelling(&self) -> &str {
        &self.spelling
    }
}

impl PartialEq<&str> for Header {
    fn eq(&self, other: &&str) -> bool {
        self.spelling == *other
    }
}

impl Serialize for Header {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.spelling)
    }
}

impl<'de> Deserialize<'de> for Header {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spelling = String::deserialize(d)?;
        Header::parse(&spelling).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_parsed_once_and_spelled_as_written() {
        let h = Header::parse("Session-Id").unwrap();
        assert_eq!(h.name(), "session-id");
        assert_eq!(h.spelling(), "Session-Id");
        assert_eq!(Header::fixed("session-id", "Session-Id"), h);
        assert!(Header::parse("bad header").is_err());
        assert!(Header::parse("Transfer-Encoding").is_err());
        assert!(Header::parse("HOST").is_err());
    }
}
