//! API tokens: bearer secrets bound to a role. Only the blake3 hash of a
//! token is stored; the token itself is shown once, when it is created.

use rusqlite::{params, OptionalExtension};

use super::{now_secs, Catalog, CatalogError};

/// What a token may do. The permissions of each role are in
/// `crate::api::ROLE_MATRIX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Coordinator,
    Auditor,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Coordinator, Role::Auditor];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Coordinator => "coordinator",
            Role::Auditor => "auditor",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: use admin, coordinator or auditor"))
    }
}

/// A listed token (never its hash).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ApiTokenRow {
    pub name: String,
    pub role: Role,
    pub created_at: i64,
    pub created_by: String,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// Outcome of presenting a bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenAuth {
    Valid { name: String, role: Role },
    Unknown,
    Revoked { name: String },
    Expired { name: String },
}

/// Longest token name.
pub const MAX_TOKEN_NAME: usize = 64;

/// Checks a token name: 1-64 of `[A-Za-z0-9._-]`, starting alphanumeric.
pub fn check_token_name(name: &str) -> Result<(), CatalogError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TOKEN_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CatalogError::Invalid(format!(
            "token name {name:?} is not valid: 1-{MAX_TOKEN_NAME} letters, digits, '.', '_' or '-', starting with a letter or digit"
        )))
    }
}

/// A new random secret: `prefix` then 32 random bytes in hex.
pub fn random_secret(prefix: &str) -> Result<String, CatalogError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| CatalogError::Invalid(format!("no randomness for a token: {e}")))?;
    Ok(format!("{prefix}{}", hex::encode(raw)))
}

/// blake3 hex of a token as stored.
pub fn hash_secret(token: &str) -> String {
    blake3::hash(token.trim().as_bytes()).to_hex().to_string()
}

const SELECT: &str = "SELECT name, role, created_at, created_by, expires_at, revoked_at, last_used_at FROM api_tokens";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiTokenRow> {
    let role: String = r.get(1)?;
    Ok(ApiTokenRow {
        name: r.get(0)?,
        // The CHECK constraint allows only the three names.
        role: role.parse().unwrap_or(Role::Auditor),
        created_at: r.get(2)?,
        created_by: r.get(3)?,
        expires_at: r.get(4)?,
        revoked_at: r.get(5)?,
        last_used_at: r.get(6)?,
    })
}

impl Catalog {
    /// Creates a one-time agent enrollment token and audits it; returns the
    /// token (only its hash is stored) and its expiry (Unix seconds).
    pub fn create_enroll_token(
        &mut self,
        agent: &pulih_core::AgentName,
        ttl_secs: i64,
        actor: &str,
    ) -> Result<(String, i64), CatalogError> {
        let token = random_secret("pulih-")?;
        let entry =
            super::NewAudit::new(actor, "enroll-token", agent.as_str(), serde_json::json!({"ttl_secs": ttl_secs}));
        let expires = self.audited(&entry, |c| c.add_token(&hash_secret(&token), agent, ttl_secs))?;
        Ok((token, expires))
    }

    /// Creates a token (call inside [`Catalog::audited`]); returns the
    /// secret, which is not stored.
    pub fn create_api_token(
        &mut self,
        name: &str,
        role: Role,
        expires_days: Option<u32>,
        created_by: &str,
    ) -> Result<(String, ApiTokenRow), CatalogError> {
        check_token_name(name)?;
        let exists: bool = self.conn.prepare("SELECT 1 FROM api_tokens WHERE name = ?1")?.exists([name])?;
        if exists {
            return Err(CatalogError::Ambiguous(format!(
                "a token named {name} already exists (names are never reused, also after revocation); choose another name"
            )));
        }
        let secret = random_secret("pulih-api-")?;
        let now = now_secs();
        let expires_at = expires_days.map(|d| now + i64::from(d) * 86_400);
        self.conn.execute(
            "INSERT INTO api_tokens (name, role, token_hash, created_at, created_by, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, role.as_str(), hash_secret(&secret), now, created_by, expires_at],
        )?;
        let row = self.api_token(name)?.ok_or_else(|| CatalogError::NotFound(format!("token {name} vanished")))?;
        Ok((secret, row))
    }

    /// One token by name.
    pub fn api_token(&self, name: &str) -> Result<Option<ApiTokenRow>, CatalogError> {
        Ok(self.conn.query_row(&format!("{SELECT} WHERE name = ?1"), [name], row).optional()?)
    }

    /// All tokens, by name.
    pub fn api_tokens(&self) -> Result<Vec<ApiTokenRow>, CatalogError> {
        let mut st = self.conn.prepare(&format!("{SELECT} ORDER BY name"))?;
        let rows = st.query_map([], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes a token by name (call inside [`Catalog::audited`]).
    pub fn revoke_api_token(&mut self, name: &str) -> Result<(), CatalogError> {
        let Some(t) = self.api_token(name)? else {
            return Err(CatalogError::NotFound(format!("no API token named {name}")));
        };
        if t.revoked_at.is_some() {
            return Err(CatalogError::Ambiguous(format!("API token {name} is already revoked")));
        }
        self.conn.execute("UPDATE api_tokens SET revoked_at = ?1 WHERE name = ?2", params![now_secs(), name])?;
        Ok(())
    }

    /// Checks a presented bearer token; a valid one has its `last_used_at`
    /// refreshed (at most once a minute, to spare the disk).
    pub fn authenticate(&self, token: &str) -> Result<TokenAuth, CatalogError> {
        let found =
            self.conn.query_row(&format!("{SELECT} WHERE token_hash = ?1"), [hash_secret(token)], row).optional()?;
        let now = now_secs();
        Ok(match found {
            None => TokenAuth::Unknown,
            Some(t) if t.revoked_at.is_some() => TokenAuth::Revoked { name: t.name },
            Some(t) if t.expires_at.is_some_and(|e| e <= now) => TokenAuth::Expired { name: t.name },
            Some(t) => {
                if t.last_used_at.is_none_or(|u| now - u >= 60) {
                    self.conn
                        .execute("UPDATE api_tokens SET last_used_at = ?1 WHERE name = ?2", params![now, t.name])?;
                }
                TokenAuth::Valid { name: t.name, role: t.role }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_authenticate_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let mut cat = Catalog::create(&dir.path().join("c.db"), "drc").unwrap();
        let (secret, row) = cat.create_api_token("alice", Role::Coordinator, None, "local:root").unwrap();
        assert_eq!(row.role, Role::Coordinator);
        assert!(secret.starts_with("pulih-api-"));
        let stored: String =
            cat.conn.query_row("SELECT token_hash FROM api_tokens WHERE name = 'alice'", [], |r| r.get(0)).unwrap();
        assert_eq!(stored, hash_secret(&secret));
        assert!(!stored.contains(&secret[10..]));
        assert_eq!(
            cat.authenticate(&secret).unwrap(),
            TokenAuth::Valid { name: "alice".into(), role: Role::Coordinator }
        );
        assert_eq!(cat.authenticate("pulih-api-00").unwrap(), TokenAuth::Unknown);
        assert!(cat.create_api_token("alice", Role::Admin, None, "x").is_err(), "names are unique");
        assert!(cat.create_api_token("../x", Role::Admin, None, "x").is_err());
        cat.revoke_api_token("alice").unwrap();
        assert_eq!(cat.authenticate(&secret).unwrap(), TokenAuth::Revoked { name: "alice".into() });
        assert!(cat.revoke_api_token("alice").is_err());
        assert!(cat.revoke_api_token("bob").is_err());
        let (s2, _) = cat.create_api_token("old", Role::Auditor, Some(0), "x").unwrap();
        assert_eq!(cat.authenticate(&s2).unwrap(), TokenAuth::Expired { name: "old".into() });
        assert_eq!(cat.api_tokens().unwrap().len(), 2);
    }
}
