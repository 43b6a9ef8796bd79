//! S3 access keys as admin operations, so `larder s3 key …` works over the API
//! (`/_api/v1/s3/keys…`) as well as on a data dir, with the same code behind both.

use serde::{Deserialize, Serialize};

use super::{require_admin, Larder, ServiceError};
use crate::auth::Caller;
use crate::meta::{S3Grant, S3Key};
use crate::s3::keys::{self, KeyError};

/// A key as listed: never its secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct S3KeyView {
    pub name: String,
    pub access_key_id: String,
    pub created_at: i64,
    pub grants: Vec<S3GrantView>,
}

/// A key with its secret: what creating or importing one answers, once.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct S3KeySecret {
    pub name: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// Rights on the buckets matching `bucket` (a name or a `*` pattern).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct S3GrantView {
    pub bucket: String,
    pub read: bool,
    pub write: bool,
    pub owner: bool,
}

/// `allow`/`deny`: the rights to add or take away on a pattern.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3GrantRequest {
    pub bucket: String,
    #[serde(default)]
    pub read: bool,
    #[serde(default)]
    pub write: bool,
    #[serde(default)]
    pub owner: bool,
}

/// `import`: fixed credentials.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3KeyImport {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl From<&S3Grant> for S3GrantView {
    fn from(g: &S3Grant) -> Self {
        Self {
            bucket: g.pattern.clone(),
            read: g.read,
            write: g.write,
            owner: g.owner,
        }
    }
}

impl From<&S3Key> for S3KeyView {
    fn from(k: &S3Key) -> Self {
        Self {
            name: k.name.clone(),
            access_key_id: k.id.clone(),
            created_at: k.created_at,
            grants: k.grants.iter().map(S3GrantView::from).collect(),
        }
    }
}

impl From<&S3Key> for S3KeySecret {
    fn from(k: &S3Key) -> Self {
        Self {
            name: k.name.clone(),
            access_key_id: k.id.clone(),
            secret_access_key: k.secret.clone(),
        }
    }
}

impl From<KeyError> for ServiceError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Invalid(m) => ServiceError::BadRequest(m),
            KeyError::NoSuchKey(_) => ServiceError::NotFound(e.to_string()),
            KeyError::NameTaken(_) | KeyError::IdTaken(_) => {
                ServiceError::BadRequest(e.to_string())
            }
            KeyError::Meta(m) => ServiceError::Meta(m),
        }
    }
}

impl Larder {
    pub fn s3_key_create(&self, caller: &Caller, name: &str) -> Result<S3KeySecret, ServiceError> {
        require_admin(caller)?;
        Ok(S3KeySecret::from(&keys::create(&self.meta, name)?))
    }

    pub fn s3_key_import(
        &self,
        caller: &Caller,
        name: &str,
        req: &S3KeyImport,
    ) -> Result<S3KeySecret, ServiceError> {
        require_admin(caller)?;
        let k = keys::import(&self.meta, &req.access_key_id, &req.secret_access_key, name)?;
        Ok(S3KeySecret::from(&k))
    }

    pub fn s3_key_list(&self, caller: &Caller) -> Result<Vec<S3KeyView>, ServiceError> {
        require_admin(caller)?;
        Ok(self.meta.s3_keys()?.iter().map(S3KeyView::from).collect())
    }

    pub fn s3_key_delete(&self, caller: &Caller, name: &str) -> Result<(), ServiceError> {
        require_admin(caller)?;
        Ok(keys::delete(&self.meta, name)?)
    }

    pub fn s3_key_allow(
        &self,
        caller: &Caller,
        name: &str,
        req: &S3GrantRequest,
    ) -> Result<S3GrantView, ServiceError> {
        require_admin(caller)?;
        let g = keys::allow(
            &self.meta,
            name,
            &req.bucket,
            req.read,
            req.write,
            req.owner,
        )?;
        Ok(S3GrantView::from(&g))
    }

    /// What remains of the grant; `None` when nothing does.
    pub fn s3_key_deny(
        &self,
        caller: &Caller,
        name: &str,
        req: &S3GrantRequest,
    ) -> Result<Option<S3GrantView>, ServiceError> {
        require_admin(caller)?;
        let g = keys::deny(
            &self.meta,
            name,
            &req.bucket,
            req.read,
            req.write,
            req.owner,
        )?;
        Ok(g.as_ref().map(S3GrantView::from))
    }
}
