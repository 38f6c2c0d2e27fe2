"""A real S3-compatible server for tests: moto in server mode on 127.0.0.1.

moto answers the S3 protocol over HTTP, so s3fs and botocore run exactly as they would
against AWS: signing, ranged reads, listing, errors. With authentication switched on
(moto's ``/moto-api/reset-auth``), it checks access keys and IAM policies.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: the access key moto accepts while authentication is off (any key is accepted then)
ADMIN_KEY = ("testing", "testing")
REGION = "us-east-1"


class S3Server:
    """A running moto server, reached at ``endpoint``."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def client(self, service: str = "s3") -> Any:
        import boto3

        key, secret = ADMIN_KEY
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=key, aws_secret_access_key=secret)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def create_user(self, name: str, actions: list[str], bucket: str) -> tuple[str, str]:
        """An IAM user allowed ``actions`` on ``bucket`` and its objects; its (access key, secret)."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        policy = {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": actions,
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        }]}
        iam.put_user_policy(UserName=name, PolicyName="photolabel-test", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    @contextmanager
    def authentication(self) -> Iterator[None]:
        """Enforce access keys and IAM policies inside the block (moto accepts every request otherwise)."""
        self._reset_auth("0")
        try:
            yield
        finally:
            self._reset_auth("inf")

    def _reset_auth(self, count: str) -> None:
        # moto counts unauthenticated requests and starts checking after `count` of them
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=count.encode(),
                                         method="POST", headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()


@contextmanager
def running_s3_server() -> Iterator[S3Server]:
    """Start moto's threaded server on a free port of 127.0.0.1; stop it on exit."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()
