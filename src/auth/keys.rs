//! RSA key material: PEM parsing, generation, signing, and JWK export.

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKey};
use aws_lc_rs::signature::KeyPair as _;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use pem::{EncodeConfig, LineEnding, Pem};

use super::AuthSetupError;

/// Smallest modulus RS256 verification accepts (aws-lc's 2048–8192 bit range).
pub(crate) const MIN_RSA_MODULUS_BYTES: usize = 256;

/// Parses an RSA public key PEM into a decoding key, or says what is wrong with it.
pub(crate) fn decoding_key_from_public_pem(pem_bytes: &[u8]) -> Result<DecodingKey, String> {
    let public = rsa_public_key_from_pem(pem_bytes)?;
    // PKCS#1 DER, whichever form the file used, so the verifier sees one shape.
    Ok(DecodingKey::from_rsa_der(public.as_ref()))
}

fn rsa_public_key_from_pem(pem_bytes: &[u8]) -> Result<PublicKey, String> {
    let block = pem::parse(pem_bytes).map_err(|e| format!("not a PEM file ({e})"))?;
    match block.tag() {
        "PUBLIC KEY" | "RSA PUBLIC KEY" => {}
        "PRIVATE KEY" | "RSA PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => {
            return Err(
                "it holds a private key; give the public key (`PUBLIC KEY` or `RSA PUBLIC KEY`)"
                    .into(),
            );
        }
        other => {
            return Err(format!(
                "expected a `PUBLIC KEY` or `RSA PUBLIC KEY` block, found `{other}`"
            ));
        }
    }
    let public = PublicKey::from_der(block.contents())
        .map_err(|_| "the block does not hold an RSA public key".to_owned())?;
    if public.modulus_len() < MIN_RSA_MODULUS_BYTES {
        return Err(format!(
            "the RSA key has {} bits; at least 2048 are required",
            public.modulus_len() * 8
        ));
    }
    Ok(public)
}

fn pem_string(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &Pem::new(tag, der),
        EncodeConfig::new().set_line_ending(LineEnding::LF),
    )
}

fn key_pair_from_private_pem(private_pem: &[u8]) -> Result<KeyPair, AuthSetupError> {
    let block = pem::parse(private_pem)
        .map_err(|e| AuthSetupError::InvalidKey(format!("private key is not PEM ({e})")))?;
    let parsed = match block.tag() {
        "PRIVATE KEY" => KeyPair::from_pkcs8(block.contents()),
        "RSA PRIVATE KEY" => KeyPair::from_der(block.contents()),
        other => {
            return Err(AuthSetupError::InvalidKey(format!(
                "expected a `PRIVATE KEY` or `RSA PRIVATE KEY` block, found `{other}`"
            )));
        }
    };
    parsed.map_err(|e| AuthSetupError::InvalidKey(format!("not an RSA private key ({e})")))
}

fn spki_pem(pair: &KeyPair) -> Result<String, AuthSetupError> {
    let spki: PublicKeyX509Der<'static> = pair
        .public_key()
        .as_der()
        .map_err(|_| AuthSetupError::KeyGeneration)?;
    Ok(pem_string("PUBLIC KEY", spki.as_ref()))
}

/// Generates a fresh RSA-2048 key pair as (private PKCS#8 PEM, public SPKI PEM).
pub fn generate_rsa_keypair() -> Result<(String, String), AuthSetupError> {
    let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| AuthSetupError::KeyGeneration)?;
    let pkcs8: Pkcs8V1Der<'static> = pair.as_der().map_err(|_| AuthSetupError::KeyGeneration)?;
    let private_pem = pem_string("PRIVATE KEY", pkcs8.as_ref());
    Ok((private_pem, spki_pem(&pair)?))
}

/// The SPKI public key PEM matching an RSA private key PEM (PKCS#8 or PKCS#1).
pub fn public_pem_from_private(private_pem: &[u8]) -> Result<String, AuthSetupError> {
    spki_pem(&key_pair_from_private_pem(private_pem)?)
}

/// Signs arbitrary claims with an RSA private key PEM (RS256, optional `kid`).
pub fn sign_rs256(
    private_pem: &[u8],
    kid: Option<&str>,
    claims: &serde_json::Value,
) -> Result<String, AuthSetupError> {
    super::ensure_jwt_crypto();
    // Parsed by aws-lc first so a bad key gets a precise message, not jsonwebtoken's generic one.
    key_pair_from_private_pem(private_pem)?;
    let key = EncodingKey::from_rsa_pem(private_pem)
        .map_err(|e| AuthSetupError::InvalidKey(format!("unusable RSA private key ({e})")))?;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).map_err(|e| AuthSetupError::Signing(e.to_string()))
}

/// The public JWK (`kty` RSA, `use` sig, `alg` RS256, `kid`) for an RSA public key PEM.
pub fn public_jwk(public_pem: &[u8], kid: &str) -> Result<serde_json::Value, AuthSetupError> {
    super::ensure_jwt_crypto();
    let key = decoding_key_from_public_pem(public_pem).map_err(AuthSetupError::InvalidKey)?;
    let mut jwk = Jwk::from_decoding_key(&key, Some(Algorithm::RS256))
        .map_err(|e| AuthSetupError::InvalidKey(e.to_string()))?;
    jwk.common.key_id = Some(kid.to_owned());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    serde_json::to_value(&jwk).map_err(|e| AuthSetupError::InvalidKey(e.to_string()))
}
