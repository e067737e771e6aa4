//! TEMPORARY glue until the b2 module lands from branch `core`.
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedSha1 {
    Verified([u8; 20]),
    Unverified([u8; 20]),
    None,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Retry,
    ReauthorizeOnce,
    Fatal,
    RunFatal,
}
pub fn classify(status: u16, code: &str) -> ErrorClass {
    match (status, code) {
        (408 | 429, _) | (500..=599, _) => ErrorClass::Retry,
        (401, "expired_auth_token" | "bad_auth_token") => ErrorClass::ReauthorizeOnce,
        (403, "download_cap_exceeded" | "transaction_cap_exceeded") => ErrorClass::RunFatal,
        _ => ErrorClass::Fatal,
    }
}
fn hex20(s: &str) -> Option<[u8; 20]> {
    if s.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
pub fn expected_sha1(content_sha1: Option<&str>, large: Option<&str>) -> ExpectedSha1 {
    let pick = |s: &str| {
        if let Some(rest) = s.strip_prefix("unverified:") {
            hex20(rest).map(ExpectedSha1::Unverified)
        } else {
            hex20(s).map(ExpectedSha1::Verified)
        }
    };
    content_sha1
        .and_then(pick)
        .or_else(|| large.and_then(pick))
        .unwrap_or(ExpectedSha1::None)
}
pub fn b2_url_encode(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~/".contains(&b) {
            out.push(b as char)
        } else {
            out.push_str(&format!("%{b:02X}"))
        }
    }
    out
}
pub struct ErrorBody {
    pub status: u16,
    pub code: String,
    pub message: String,
}
pub fn parse_error_body(body: &[u8]) -> Option<ErrorBody> {
    let v: Value = serde_json::from_slice(body).ok()?;
    Some(ErrorBody {
        status: v["status"].as_u64()? as u16,
        code: v["code"].as_str()?.into(),
        message: v["message"].as_str().unwrap_or("").into(),
    })
}
pub struct Authorized {
    pub account_id: Option<String>,
    pub authorization_token: String,
    pub api_url: String,
    pub download_url: String,
    pub recommended_part_size: Option<u64>,
}
pub fn parse_authorize(body: &[u8]) -> Result<Authorized, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    let s = &v["apiInfo"]["storageApi"];
    Ok(Authorized {
        account_id: v["accountId"].as_str().map(str::to_string),
        authorization_token: v["authorizationToken"]
            .as_str()
            .ok_or("no authorizationToken")?
            .into(),
        api_url: s["apiUrl"].as_str().ok_or("no apiUrl")?.into(),
        download_url: s["downloadUrl"].as_str().ok_or("no downloadUrl")?.into(),
        recommended_part_size: s["recommendedPartSize"].as_u64(),
    })
}
