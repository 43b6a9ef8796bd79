//! DeleteObject (with `If-Match`) and DeleteObjects (up to 1000 keys, one
//! transaction, quiet mode).
//!
//! Deleting removes the object row only; its chunks stay until garbage collection
//! finds no manifest naming them.

use s3s::dto::{
    DeleteObjectInput, DeleteObjectOutput, DeleteObjectsInput, DeleteObjectsOutput, DeletedObject,
    Error as KeyError,
};
use s3s::{S3Request, S3Response};

use super::bucket::bucket;
use super::dispatch::{meta_blocking, LarderS3};
use super::error::{S3ApiError, S3ApiResult};
use super::object::{check_key, WriteConditions};

/// Most keys one DeleteObjects may name.
pub const MAX_DELETE_KEYS: usize = 1000;

pub(crate) async fn delete_object(
    s3: &LarderS3,
    req: S3Request<DeleteObjectInput>,
) -> S3ApiResult<S3Response<DeleteObjectOutput>> {
    let input = req.input;
    let b = bucket(s3, &input.bucket)?;
    let key = input.key.into_bytes();
    let conds = WriteConditions {
        if_match: input.if_match,
        if_none_match: None,
    };
    let done = meta_blocking(&s3.larder, move |m| {
        Ok(m.s3_object_delete_checked(b.id, &key, |cur| match cur {
            // Deleting what is not there succeeds, unless If-Match wanted it there.
            None if conds.if_match.is_none() => Ok(()),
            cur => conds.check(cur),
        })?)
    })
    .await?;
    done?;
    Ok(S3Response::new(DeleteObjectOutput::default()))
}

pub(crate) async fn delete_objects(
    s3: &LarderS3,
    req: S3Request<DeleteObjectsInput>,
) -> S3ApiResult<S3Response<DeleteObjectsOutput>> {
    let input = req.input;
    let b = bucket(s3, &input.bucket)?;
    let objects = input.delete.objects;
    if objects.is_empty() || objects.len() > MAX_DELETE_KEYS {
        return Err(S3ApiError::MalformedXML(format!(
            "a DeleteObjects request names 1 to {MAX_DELETE_KEYS} keys; this one names {}",
            objects.len()
        )));
    }
    let quiet = input.delete.quiet.unwrap_or(false);
    let mut errors = Vec::new();
    let mut keys = Vec::new();
    for o in objects {
        if let Err(e) = check_key(&o.key) {
            errors.push(KeyError {
                code: Some(e.aws_code().as_str().to_owned()),
                key: Some(o.key),
                message: Some(e.to_string()),
                version_id: None,
            });
        } else if o.version_id.as_deref().is_some_and(|v| v != "null") {
            errors.push(KeyError {
                code: Some("NoSuchVersion".into()),
                key: Some(o.key),
                message: Some("versioning is not supported".into()),
                version_id: o.version_id,
            });
        } else {
            keys.push(o.key);
        }
    }
    let raw: Vec<Vec<u8>> = keys.iter().map(|k| k.as_bytes().to_vec()).collect();
    meta_blocking(&s3.larder, move |m| Ok(m.s3_objects_delete(b.id, &raw)?)).await?;
    let deleted = if quiet {
        Vec::new()
    } else {
        keys.into_iter()
            .map(|k| DeletedObject {
                key: Some(k),
                ..Default::default()
            })
            .collect()
    };
    Ok(S3Response::new(DeleteObjectsOutput {
        deleted: Some(deleted),
        errors: Some(errors),
        ..Default::default()
    }))
}
