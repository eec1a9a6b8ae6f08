//! Encryption at rest of provider credentials: AES-256-GCM with a key from
//! the environment (`credentials.key`, base64 of 32 bytes), a random nonce
//! per value, the app id and provider as associated data (a sealed value
//! cannot be moved to another app or provider).

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("credentials.key must be 32 bytes in base64 (e.g. `openssl rand -base64 32`)")]
    BadKey,
    #[error("no credentials.key is configured: provider credentials cannot be stored or read")]
    NoKey,
    #[error("sealed credentials could not be opened (wrong credentials.key, or tampered data)")]
    Open,
    #[error("randomness unavailable")]
    Random,
}

#[derive(Clone)]
pub struct Sealer {
    key: std::sync::Arc<LessSafeKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    pub fn from_base64(key: &str) -> Result<Self, SealError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| SealError::BadKey)?;
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SealError::BadKey)?;
        Ok(Self {
            key: std::sync::Arc::new(LessSafeKey::new(unbound)),
        })
    }

    /// nonce || ciphertext+tag
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut data = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.extend(data);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, data) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| SealError::Open)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let s = Sealer::from_base64(KEY).unwrap();
        let sealed = s.seal(b"secret pem", "app:apns").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(s.open(&sealed, "app:apns").unwrap(), b"secret pem");
        assert!(
            s.open(&sealed, "other:apns").is_err(),
            "bound to its app and provider"
        );
        let other = Sealer::from_base64("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=").unwrap();
        assert!(other.open(&sealed, "app:apns").is_err());
        assert_ne!(
            s.seal(b"x", "c").unwrap(),
            s.seal(b"x", "c").unwrap(),
            "fresh nonce"
        );
    }

    #[test]
    fn a_bad_key_is_refused() {
        assert!(Sealer::from_base64("short").is_err());
        assert!(Sealer::from_base64("not base64!!").is_err());
    }
}
