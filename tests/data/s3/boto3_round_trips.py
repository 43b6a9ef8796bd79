"""boto3 round trips against larder's S3 API: put, get, list, a 100 MiB multipart
upload, presigned GET and PUT, ranged GETs, a copy and a delete of many objects.

Run by tests/s3.rs with S3_ENDPOINT, S3_REGION and AWS credentials in the
environment; argv[1] is a scratch directory holding big.bin (100 MiB).
Recent boto3 sends CRC32 checksums by default (in aws-chunked trailers for
streamed bodies); this script keeps that default on purpose.
"""
import hashlib
import os
import sys
import urllib.request

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

endpoint = os.environ["S3_ENDPOINT"]
region = os.environ["S3_REGION"]
work = sys.argv[1]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    region_name=region,
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
)
bucket = "boto"


def md5(b):
    return hashlib.md5(b).hexdigest()


s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]

data = os.urandom(70_000)
r = s3.put_object(
    Bucket=bucket, Key="docs/a.txt", Body=data, ContentType="text/plain",
    Metadata={"color": "blue"},
)
assert r["ETag"] == '"%s"' % md5(data), r
g = s3.get_object(Bucket=bucket, Key="docs/a.txt")
assert g["Body"].read() == data
assert g["ContentType"] == "text/plain", g
assert g["Metadata"] == {"color": "blue"}, g["Metadata"]
keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="docs/")["Contents"]]
assert keys == ["docs/a.txt"], keys

# 100 MiB in 8 MiB parts (13), with boto3's default part checksums.
big = os.path.join(work, "big.bin")
cfg = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20)
s3.upload_file(big, bucket, "big.bin", Config=cfg)
h = s3.head_object(Bucket=bucket, Key="big.bin")
assert h["ContentLength"] == 100 << 20, h
assert h["ETag"].endswith('-13"'), h
back = os.path.join(work, "big.back")
s3.download_file(bucket, "big.bin", back, Config=cfg)
with open(big, "rb") as f:
    want = hashlib.sha256(f.read()).hexdigest()
with open(back, "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == want

# Ranged GETs: closed, open-ended, suffix.
with open(big, "rb") as f:
    whole = f.read()
for rng, want in [
    ("bytes=0-0", whole[:1]),
    ("bytes=1000-1999", whole[1000:2000]),
    ("bytes=104857000-", whole[104857000:]),
    ("bytes=-1000", whole[-1000:]),
]:
    g = s3.get_object(Bucket=bucket, Key="big.bin", Range=rng)
    assert g["Body"].read() == want, rng
    assert g["ResponseMetadata"]["HTTPStatusCode"] == 206, rng

# Presigned GET and PUT.
url = s3.generate_presigned_url(
    "get_object", Params={"Bucket": bucket, "Key": "docs/a.txt"}, ExpiresIn=300
)
assert urllib.request.urlopen(url).read() == data
payload = os.urandom(12345)
url = s3.generate_presigned_url(
    "put_object", Params={"Bucket": bucket, "Key": "presigned.bin"}, ExpiresIn=300
)
req = urllib.request.Request(url, data=payload, method="PUT")
assert urllib.request.urlopen(req).status == 200
assert s3.get_object(Bucket=bucket, Key="presigned.bin")["Body"].read() == payload

# Copy, keeping the metadata.
s3.copy_object(Bucket=bucket, Key="copy.txt", CopySource={"Bucket": bucket, "Key": "docs/a.txt"})
g = s3.get_object(Bucket=bucket, Key="copy.txt")
assert g["Body"].read() == data and g["Metadata"] == {"color": "blue"}

# Delete many.
names = ["many/%03d" % i for i in range(150)]
for n in names:
    s3.put_object(Bucket=bucket, Key=n, Body=n.encode())
pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="many/", PaginationConfig={"PageSize": 40})
assert sum(len(p.get("Contents", [])) for p in pages) == 150
r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": n} for n in names]})
assert len(r["Deleted"]) == 150 and not r.get("Errors"), r
assert s3.list_objects_v2(Bucket=bucket, Prefix="many/")["KeyCount"] == 0
print("OK")
