"""AWS behaviour of larder's S3 API, checked with boto3: conditional GET, HEAD and
PUT; ranges and 416; metadata, Content-MD5 and checksums; CopyObject's metadata
directive; ListObjects v1 and v2 parameters; multipart rules, ETags, ListParts,
ListMultipartUploads, UploadPartCopy and Abort; bucket rules.

Run by tests/s3.rs with S3_ENDPOINT, S3_REGION and AWS credentials set. Prints
OK at the end; any failed check raises.
"""
import base64
import datetime
import hashlib
import os
import zlib

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

endpoint = os.environ["S3_ENDPOINT"]
region = os.environ["S3_REGION"]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    region_name=region,
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
)
b = "sem"


def md5(x):
    return hashlib.md5(x).hexdigest()


def expect(code, status, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except ClientError as e:
        got = (e.response["Error"].get("Code"), e.response["ResponseMetadata"]["HTTPStatusCode"])
        assert got == (code, status), "expected %s %s, got %s" % (code, status, got)
        return e
    raise AssertionError("expected %s, but it succeeded" % code)


s3.create_bucket(Bucket=b)
expect("BucketAlreadyOwnedByYou", 409, s3.create_bucket, Bucket=b)
s3.head_bucket(Bucket=b)
expect("404", 404, s3.head_bucket, Bucket="no-such-bucket")
expect("NoSuchBucket", 404, s3.list_objects_v2, Bucket="no-such-bucket")

# ---- ETags, metadata, Content-Type, Content-MD5, checksums ----
data = b"hello world"
r = s3.put_object(
    Bucket=b, Key="obj", Body=data, ContentType="text/x-test",
    Metadata={"Color": "Blue", "n": "1"}, CacheControl="max-age=60",
    ContentDisposition="attachment", ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode(),
)
assert r["ETag"] == '"%s"' % md5(data)
h = s3.head_object(Bucket=b, Key="obj")
assert h["ContentType"] == "text/x-test" and h["ContentLength"] == 11
assert h["Metadata"] == {"color": "Blue", "n": "1"}, h["Metadata"]
assert h["CacheControl"] == "max-age=60" and h["ContentDisposition"] == "attachment"
expect(
    "BadDigest", 400, s3.put_object, Bucket=b, Key="bad", Body=b"x",
    ContentMD5=base64.b64encode(hashlib.md5(b"y").digest()).decode(),
)
crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
r = s3.put_object(Bucket=b, Key="crc", Body=data, ChecksumCRC32=crc)
assert r.get("ChecksumCRC32") == crc, r
g = s3.get_object(Bucket=b, Key="crc", ChecksumMode="ENABLED")
assert g["ChecksumCRC32"] == crc and g["Body"].read() == data
expect("BadDigest", 400, s3.put_object, Bucket=b, Key="crc2", Body=data, ChecksumCRC32="AAAAAA==")
r = s3.put_object(Bucket=b, Key="sha", Body=data, ChecksumAlgorithm="SHA256")
assert r.get("ChecksumSHA256") == base64.b64encode(hashlib.sha256(data).digest()).decode(), r
expect("NoSuchKey", 404, s3.get_object, Bucket=b, Key="bad")

# ---- Ranges ----
s3.put_object(Bucket=b, Key="ten", Body=b"0123456789")
for rng, want, cr in [
    ("bytes=0-3", b"0123", "bytes 0-3/10"),
    ("bytes=7-", b"789", "bytes 7-9/10"),
    ("bytes=-3", b"789", "bytes 7-9/10"),
    ("bytes=5-100", b"56789", "bytes 5-9/10"),
    ("bytes=-100", b"0123456789", "bytes 0-9/10"),
]:
    g = s3.get_object(Bucket=b, Key="ten", Range=rng)
    assert g["Body"].read() == want and g["ContentRange"] == cr, (rng, g["ContentRange"])
expect("InvalidRange", 416, s3.get_object, Bucket=b, Key="ten", Range="bytes=10-20")
s3.put_object(Bucket=b, Key="empty", Body=b"")
assert s3.get_object(Bucket=b, Key="empty")["Body"].read() == b""
expect("InvalidRange", 416, s3.get_object, Bucket=b, Key="empty", Range="bytes=0-0")

# ---- Conditional GET and HEAD ----
etag = s3.head_object(Bucket=b, Key="ten")["ETag"]
lm = s3.head_object(Bucket=b, Key="ten")["LastModified"]
later = lm + datetime.timedelta(seconds=60)
earlier = lm - datetime.timedelta(seconds=60)
assert s3.get_object(Bucket=b, Key="ten", IfMatch=etag)["Body"].read() == b"0123456789"
expect("PreconditionFailed", 412, s3.get_object, Bucket=b, Key="ten", IfMatch='"nope"')
expect("304", 304, s3.get_object, Bucket=b, Key="ten", IfNoneMatch=etag)
expect("304", 304, s3.head_object, Bucket=b, Key="ten", IfNoneMatch=etag)
expect("304", 304, s3.get_object, Bucket=b, Key="ten", IfModifiedSince=later)
s3.get_object(Bucket=b, Key="ten", IfModifiedSince=earlier)
expect("PreconditionFailed", 412, s3.get_object, Bucket=b, Key="ten", IfUnmodifiedSince=earlier)
s3.get_object(Bucket=b, Key="ten", IfUnmodifiedSince=later)
expect("412", 412, s3.head_object, Bucket=b, Key="ten", IfMatch='"nope"')
# If-Match true wins over a failing If-Unmodified-Since (S3 documents this).
s3.get_object(Bucket=b, Key="ten", IfMatch=etag, IfUnmodifiedSince=earlier)

# ---- Conditional PUT (Garage ignores these; S3 does not) ----
expect("PreconditionFailed", 412, s3.put_object, Bucket=b, Key="ten", Body=b"x", IfNoneMatch="*")
s3.put_object(Bucket=b, Key="fresh", Body=b"first", IfNoneMatch="*")
expect("PreconditionFailed", 412, s3.put_object, Bucket=b, Key="fresh", Body=b"again", IfNoneMatch="*")
expect("PreconditionFailed", 412, s3.put_object, Bucket=b, Key="fresh", Body=b"x", IfMatch='"nope"')
expect("NoSuchKey", 404, s3.put_object, Bucket=b, Key="absent", Body=b"x", IfMatch='"nope"')
e1 = s3.head_object(Bucket=b, Key="fresh")["ETag"]
s3.put_object(Bucket=b, Key="fresh", Body=b"second", IfMatch=e1)
assert s3.get_object(Bucket=b, Key="fresh")["Body"].read() == b"second"

# ---- CopyObject and its metadata directive ----
s3.copy_object(Bucket=b, Key="copy", CopySource={"Bucket": b, "Key": "obj"})
h = s3.head_object(Bucket=b, Key="copy")
assert h["Metadata"] == {"color": "Blue", "n": "1"} and h["ContentType"] == "text/x-test"
assert h["ETag"] == '"%s"' % md5(data)
s3.copy_object(
    Bucket=b, Key="copy", CopySource={"Bucket": b, "Key": "obj"},
    MetadataDirective="REPLACE", Metadata={"x": "y"}, ContentType="text/plain",
)
h = s3.head_object(Bucket=b, Key="copy")
assert h["Metadata"] == {"x": "y"} and h["ContentType"] == "text/plain", h
expect("InvalidRequest", 400, s3.copy_object, Bucket=b, Key="obj", CopySource={"Bucket": b, "Key": "obj"})
s3.copy_object(Bucket=b, Key="obj", CopySource={"Bucket": b, "Key": "obj"}, MetadataDirective="REPLACE", Metadata={"k": "v"})
expect("PreconditionFailed", 412, s3.copy_object, Bucket=b, Key="c2", CopySource={"Bucket": b, "Key": "obj"}, CopySourceIfMatch='"nope"')
expect("NoSuchKey", 404, s3.copy_object, Bucket=b, Key="c3", CopySource={"Bucket": b, "Key": "missing"})

# ---- Listing ----
lb = "lists"
s3.create_bucket(Bucket=lb)
names = ["a", "b/1", "b/2", "b/c/3", "d e+f", "k\u00e9y", "z/x"]
for n in names:
    s3.put_object(Bucket=lb, Key=n, Body=n.encode())
v2 = s3.list_objects_v2(Bucket=lb, Delimiter="/")
assert [o["Key"] for o in v2["Contents"]] == ["a", "d e+f", "k\u00e9y"], v2
assert [p["Prefix"] for p in v2["CommonPrefixes"]] == ["b/", "z/"]
assert v2["KeyCount"] == 5
v2 = s3.list_objects_v2(Bucket=lb, Prefix="b/", Delimiter="/")
assert [o["Key"] for o in v2["Contents"]] == ["b/1", "b/2"]
assert [p["Prefix"] for p in v2["CommonPrefixes"]] == ["b/c/"]
# Pages of two with continuation tokens.
seen, token = [], None
while True:
    kw = {"ContinuationToken": token} if token else {}
    page = s3.list_objects_v2(Bucket=lb, MaxKeys=2, **kw)
    seen += [o["Key"] for o in page.get("Contents", [])]
    if not page["IsTruncated"]:
        break
    token = page["NextContinuationToken"]
assert seen == sorted(names, key=lambda s: s.encode()), seen
assert [o["Key"] for o in s3.list_objects_v2(Bucket=lb, StartAfter="b/2")["Contents"]] == ["b/c/3", "d e+f", "k\u00e9y", "z/x"]
# v1: marker, max-keys, NextMarker only with a delimiter.
v1 = s3.list_objects(Bucket=lb, MaxKeys=2)
assert v1["IsTruncated"] and "NextMarker" not in v1, v1
v1 = s3.list_objects(Bucket=lb, Marker="b/2")
assert [o["Key"] for o in v1["Contents"]] == ["b/c/3", "d e+f", "k\u00e9y", "z/x"]
v1 = s3.list_objects(Bucket=lb, Delimiter="/", MaxKeys=2)
assert v1["IsTruncated"] and v1["NextMarker"] == "b/", v1
v1 = s3.list_objects(Bucket=lb, Delimiter="/", Marker="b/")
assert [o["Key"] for o in v1["Contents"]] == ["d e+f", "k\u00e9y"], v1
assert [p["Prefix"] for p in v1["CommonPrefixes"]] == ["z/"], v1
assert s3.list_objects_v2(Bucket=lb, MaxKeys=0)["KeyCount"] == 0
# encoding-type=url: asked for explicitly, boto3 leaves the encoding in place.
v2 = s3.list_objects_v2(Bucket=lb, Prefix="d", EncodingType="url")
assert [o["Key"] for o in v2["Contents"]] == ["d%20e%2Bf"], v2
v2 = s3.list_objects_v2(Bucket=lb, Prefix="k", EncodingType="url")
assert [o["Key"] for o in v2["Contents"]] == ["k%C3%A9y"], v2
expect("NoSuchBucket", 404, s3.list_objects, Bucket="nope-bucket")

# ---- Multipart ----
mp = "multi"
s3.create_bucket(Bucket=mp)
part = os.urandom(5 << 20)
tail = os.urandom(1000)
up = s3.create_multipart_upload(Bucket=mp, Key="obj", ContentType="application/x-test", Metadata={"m": "1"})["UploadId"]
p1 = s3.upload_part(Bucket=mp, Key="obj", UploadId=up, PartNumber=1, Body=part)["ETag"]
p2 = s3.upload_part(Bucket=mp, Key="obj", UploadId=up, PartNumber=2, Body=tail)["ETag"]
assert p1 == '"%s"' % md5(part)
lp = s3.list_parts(Bucket=mp, Key="obj", UploadId=up)
assert [(p["PartNumber"], p["Size"]) for p in lp["Parts"]] == [(1, 5 << 20), (2, 1000)]
lp = s3.list_parts(Bucket=mp, Key="obj", UploadId=up, MaxParts=1)
assert lp["IsTruncated"] and lp["NextPartNumberMarker"] == 1
lp = s3.list_parts(Bucket=mp, Key="obj", UploadId=up, PartNumberMarker=1)
assert [p["PartNumber"] for p in lp["Parts"]] == [2]
ups = s3.list_multipart_uploads(Bucket=mp)["Uploads"]
assert [(u["Key"], u["UploadId"]) for u in ups] == [("obj", up)]
# Not visible before completion.
expect("NoSuchKey", 404, s3.get_object, Bucket=mp, Key="obj")
# Bad completions: wrong ETag, wrong order, unknown part, a small middle part.
expect("InvalidPart", 400, s3.complete_multipart_upload, Bucket=mp, Key="obj", UploadId=up,
       MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"%s"' % ("0" * 32)}, {"PartNumber": 2, "ETag": p2}]})
expect("InvalidPartOrder", 400, s3.complete_multipart_upload, Bucket=mp, Key="obj", UploadId=up,
       MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": p2}, {"PartNumber": 1, "ETag": p1}]})
expect("InvalidPart", 400, s3.complete_multipart_upload, Bucket=mp, Key="obj", UploadId=up,
       MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p1}, {"PartNumber": 3, "ETag": p2}]})
small = s3.upload_part(Bucket=mp, Key="obj", UploadId=up, PartNumber=3, Body=b"tiny")["ETag"]
small4 = s3.upload_part(Bucket=mp, Key="obj", UploadId=up, PartNumber=4, Body=b"tiny")["ETag"]
expect("EntityTooSmall", 400, s3.complete_multipart_upload, Bucket=mp, Key="obj", UploadId=up,
       MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p1}, {"PartNumber": 3, "ETag": small}, {"PartNumber": 4, "ETag": small4}]})
r = s3.complete_multipart_upload(Bucket=mp, Key="obj", UploadId=up,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p1}, {"PartNumber": 2, "ETag": p2}]})
want = hashlib.md5(hashlib.md5(part).digest() + hashlib.md5(tail).digest()).hexdigest() + "-2"
assert r["ETag"] == '"%s"' % want, r
g = s3.get_object(Bucket=mp, Key="obj")
assert g["Body"].read() == part + tail and g["ContentType"] == "application/x-test" and g["Metadata"] == {"m": "1"}
g = s3.get_object(Bucket=mp, Key="obj", PartNumber=2)
assert g["Body"].read() == tail and g["PartsCount"] == 2, g
expect("NoSuchUpload", 404, s3.upload_part, Bucket=mp, Key="obj", UploadId=up, PartNumber=1, Body=b"x")
expect("NoSuchUpload", 404, s3.list_parts, Bucket=mp, Key="obj", UploadId=up)
# UploadPartCopy: a whole object and a range of one.
up = s3.create_multipart_upload(Bucket=mp, Key="copied")["UploadId"]
c1 = s3.upload_part_copy(Bucket=mp, Key="copied", UploadId=up, PartNumber=1, CopySource={"Bucket": mp, "Key": "obj"}, CopySourceRange="bytes=0-%d" % ((5 << 20) - 1))
c2 = s3.upload_part_copy(Bucket=mp, Key="copied", UploadId=up, PartNumber=2, CopySource={"Bucket": b, "Key": "ten"})
assert c1["CopyPartResult"]["ETag"] == '"%s"' % md5(part)
s3.complete_multipart_upload(Bucket=mp, Key="copied", UploadId=up, MultipartUpload={"Parts": [
    {"PartNumber": 1, "ETag": c1["CopyPartResult"]["ETag"]}, {"PartNumber": 2, "ETag": c2["CopyPartResult"]["ETag"]}]})
assert s3.get_object(Bucket=mp, Key="copied")["Body"].read() == part + b"0123456789"
# Abort leaves nothing visible.
up = s3.create_multipart_upload(Bucket=mp, Key="aborted")["UploadId"]
s3.upload_part(Bucket=mp, Key="aborted", UploadId=up, PartNumber=1, Body=b"data")
s3.abort_multipart_upload(Bucket=mp, Key="aborted", UploadId=up)
expect("NoSuchUpload", 404, s3.abort_multipart_upload, Bucket=mp, Key="aborted", UploadId=up)
expect("NoSuchKey", 404, s3.get_object, Bucket=mp, Key="aborted")
assert s3.list_multipart_uploads(Bucket=mp).get("Uploads", []) == []
# Conditional completion.
up = s3.create_multipart_upload(Bucket=mp, Key="obj")["UploadId"]
e = s3.upload_part(Bucket=mp, Key="obj", UploadId=up, PartNumber=1, Body=b"x")["ETag"]
expect("PreconditionFailed", 412, s3.complete_multipart_upload, Bucket=mp, Key="obj", UploadId=up,
       MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e}]}, IfNoneMatch="*")
s3.abort_multipart_upload(Bucket=mp, Key="obj", UploadId=up)
# Uploads listing with prefixes and markers.
ids = {}
for k in ["u/a", "u/b", "v"]:
    ids[k] = s3.create_multipart_upload(Bucket=mp, Key=k)["UploadId"]
lu = s3.list_multipart_uploads(Bucket=mp, Delimiter="/")
assert [u["Key"] for u in lu.get("Uploads", [])] == ["v"] and [p["Prefix"] for p in lu["CommonPrefixes"]] == ["u/"], lu
lu = s3.list_multipart_uploads(Bucket=mp, Prefix="u/", MaxUploads=1)
assert lu["IsTruncated"] and lu["NextKeyMarker"] == "u/a", lu
lu = s3.list_multipart_uploads(Bucket=mp, KeyMarker="u/a")
assert [u["Key"] for u in lu["Uploads"]] == ["u/b", "v"], lu

# ---- Delete semantics and bucket rules ----
s3.delete_object(Bucket=b, Key="never-existed")
expect("PreconditionFailed", 412, s3.delete_object, Bucket=b, Key="ten", IfMatch='"nope"')
s3.delete_object(Bucket=b, Key="ten", IfMatch=etag)
expect("404", 404, s3.head_object, Bucket=b, Key="ten")
r = s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "obj"}, {"Key": "gone"}], "Quiet": True})
assert not r.get("Deleted") and not r.get("Errors"), r
expect("BucketNotEmpty", 409, s3.delete_bucket, Bucket=lb)
for n in names:
    s3.delete_object(Bucket=lb, Key=n)
s3.delete_bucket(Bucket=lb)
expect("NoSuchBucket", 404, s3.delete_bucket, Bucket=lb)
expect("InvalidBucketName", 400, s3.create_bucket, Bucket="Not_Valid")
print("OK")
