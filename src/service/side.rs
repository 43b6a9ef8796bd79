//! Side files: build logs, NAR listings (`.ls`) and realisations, stored whole.

use super::decode::{self, Compression};
use super::{Larder, ServiceError};
use crate::auth::{Caller, Permission};

/// Which kind of side file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SideKind {
    /// `log/<drv>`: text.
    Log,
    /// `<hash>.ls`: JSON.
    Listing,
    /// `realisations/<id>.doi` and `build-trace-v2/<drv>/<out>.doi`: JSON.
    Realisation,
}

impl SideKind {
    fn tag(self) -> &'static str {
        match self {
            SideKind::Log => "log",
            SideKind::Listing => "ls",
            SideKind::Realisation => "realisation",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            SideKind::Log => "text/plain; charset=utf-8",
            SideKind::Listing | SideKind::Realisation => "application/json",
        }
    }
}

impl Larder {
    pub fn put_side(
        &self,
        caller: &Caller,
        cache: &str,
        kind: SideKind,
        key: &str,
        body: Vec<u8>,
        content_encoding: Option<&str>,
    ) -> Result<(), ServiceError> {
        let row = self.authorize(caller, cache, Permission::Push)?;
        let body = match content_encoding {
            Some(enc) => decode::decode_small(
                Compression::from_content_encoding(enc)?,
                body,
                self.config.max_small_body,
            )?,
            None => body,
        };
        if kind != SideKind::Log {
            serde_json::from_slice::<serde_json::Value>(&body).map_err(|e| {
                ServiceError::BadRequest(format!("{} body is not JSON: {e}", kind.tag()))
            })?;
        }
        self.meta.put_side_file(row.id, kind.tag(), key, &body)?;
        Ok(())
    }

    pub fn get_side(
        &self,
        caller: &Caller,
        cache: &str,
        kind: SideKind,
        key: &str,
    ) -> Result<Vec<u8>, ServiceError> {
        let row = self.authorize(caller, cache, Permission::Pull)?;
        self.meta
            .side_file(row.id, kind.tag(), key)?
            .ok_or_else(|| {
                ServiceError::NotFound(format!("{} {key} is not in cache {cache}", kind.tag()))
            })
    }
}
