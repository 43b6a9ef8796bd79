"""S3 clients for bench/load.sh: THREADS threads with boto3 for SECONDS, each
putting objects of 4 KiB to 1 MiB, reading each back and checking its bytes,
and listing now and then. Credentials from AWS_* variables.

  load_s3.py ENDPOINT BUCKET THREADS SECONDS

Prints "key value" lines: operations, failures (an exception or a wrong body).
"""
import concurrent.futures
import os
import random
import sys
import time

import boto3
from botocore.config import Config


def main():
    endpoint, bucket, threads, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="larder",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      max_pool_connections=threads),
    )
    s3.create_bucket(Bucket=bucket)
    end = time.monotonic() + secs

    def worker(n):
        ops = failures = 0
        rng = random.Random(n)
        i = 0
        while time.monotonic() < end:
            key = f"w{n}/obj-{i}"
            body = os.urandom(rng.choice([4096, 65536, 1 << 20]))
            try:
                s3.put_object(Bucket=bucket, Key=key, Body=body)
                got = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                if got != body:
                    failures += 1
                if i % 10 == 0:
                    s3.list_objects_v2(Bucket=bucket, Prefix=f"w{n}/")
                    ops += 1
                ops += 2
            except Exception as e:  # every failure is counted and shown once
                failures += 1
                print(f"s3 failure: {e}", file=sys.stderr)
            i += 1
        return ops, failures

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(worker, range(threads)))
    print(f"operations {sum(r[0] for r in results)}")
    print(f"failures {sum(r[1] for r in results)}")


if __name__ == "__main__":
    main()
