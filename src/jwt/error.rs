//! Why a token is refused, as the machine reason a client and the metrics see.

use jsonwebtoken::errors::ErrorKind;

/// Why a token was refused: the machine reason of `401 invalid_token`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token (Authorization: Bearer, or the configured parameter or cookie)")]
    Missing,
    #[error("expired")]
    Expired,
    #[error("not_yet_valid")]
    NotYetValid,
    #[error("bad_signature")]
    BadSignature,
    #[error("bad_issuer")]
    BadIssuer,
    #[error("bad_audience")]
    BadAudience,
    #[error("bad_algorithm")]
    BadAlgorithm,
    #[error("unknown_kid")]
    UnknownKid,
    #[error("missing_claim")]
    MissingClaim,
    #[error("too_long_lived")]
    TooLongLived,
    #[error("malformed")]
    Malformed,
    /// No key set to verify with (`jwks_url` not fetched yet, or staler than
    /// `jwks_max_stale`): `503 auth_unavailable`, since the token may be fine.
    #[error("keys_unavailable")]
    KeysUnavailable,
}

impl TokenError {
    /// The machine reason (also the metric label).
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::BadSignature => "bad_signature",
            TokenError::BadIssuer => "bad_issuer",
            TokenError::BadAudience => "bad_audience",
            TokenError::BadAlgorithm => "bad_algorithm",
            TokenError::UnknownKid => "unknown_kid",
            TokenError::MissingClaim => "missing_claim",
            TokenError::TooLongLived => "too_long_lived",
            TokenError::Malformed => "malformed",
            TokenError::KeysUnavailable => "keys_unavailable",
        }
    }

    pub(super) fn from_jwt(e: &jsonwebtoken::errors::Error) -> Self {
        match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::InvalidIssuer => TokenError::BadIssuer,
            ErrorKind::InvalidAudience => TokenError::BadAudience,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::MissingAlgorithm => TokenError::BadAlgorithm,
            ErrorKind::MissingRequiredClaim(_) => TokenError::MissingClaim,
            _ => TokenError::Malformed,
        }
    }
}
