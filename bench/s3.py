"""Helpers for bench/s3.sh, with boto3: create a bucket, presign URLs, load many
small keys, and time full ListObjectsV2 walks. Credentials come from the usual
AWS_* variables; every command takes --endpoint and --region.

  s3.py ENDPOINT REGION mkbucket BUCKET
  s3.py ENDPOINT REGION presign METHOD BUCKET KEY...      # one URL per line
  s3.py ENDPOINT REGION put-small BUCKET PREFIX COUNT SIZE THREADS
  s3.py ENDPOINT REGION list-walk BUCKET REPS              # prints seconds per walk
"""
import concurrent.futures
import os
import statistics
import sys
import time

import boto3
from botocore.config import Config


def client(endpoint, region):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 2},
            max_pool_connections=64,
        ),
    )


def main():
    endpoint, region, cmd, *args = sys.argv[1:]
    s3 = client(endpoint, region)
    if cmd == "mkbucket":
        try:
            s3.create_bucket(Bucket=args[0])
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass
    elif cmd == "presign":
        method, bucket, *keys = args
        op = {"GET": "get_object", "PUT": "put_object"}[method]
        for k in keys:
            print(s3.generate_presigned_url(op, Params={"Bucket": bucket, "Key": k}, ExpiresIn=6 * 3600))
    elif cmd == "presign-list":
        bucket, max_keys = args
        print(s3.generate_presigned_url(
            "list_objects_v2", Params={"Bucket": bucket, "MaxKeys": int(max_keys)}, ExpiresIn=6 * 3600))
    elif cmd == "put-small":
        bucket, prefix, count, size, threads = args[0], args[1], int(args[2]), int(args[3]), int(args[4])

        def put(i):
            s3.put_object(Bucket=bucket, Key="%s%06d" % (prefix, i), Body=os.urandom(size))

        with concurrent.futures.ThreadPoolExecutor(threads) as ex:
            list(ex.map(put, range(count)))
    elif cmd == "list-walk":
        bucket, reps = args[0], int(args[1])
        times = []
        for _ in range(reps):
            t = time.monotonic()
            n = 0
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 1000}):
                n += len(page.get("Contents", []))
            times.append(time.monotonic() - t)
        print("%.4f %d" % (statistics.median(times), n))
    else:
        raise SystemExit("unknown command " + cmd)


main()
