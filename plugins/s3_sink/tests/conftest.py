"""moto's S3 server on loopback, shared by the whole session, with authentication switched on.

moto checks SigV4 signatures and IAM policies once ``moto.settings.INITIAL_NO_AUTH_ACTION_COUNT`` is reached:
the IAM users below are made while it is still open, then every request must be signed by a key moto issued
(a wrong secret is ``SignatureDoesNotMatch``, an unknown key ``InvalidAccessKeyId``) and allowed by the user's
policy (else ``AccessDenied``).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NamedTuple

import botocore.session
import moto.settings
import msgspec
import pytest
from moto.server import ThreadedMotoServer

from sluicegate_s3_sink.sink import S3Sink

REGION = "eu-west-1"


class Account(NamedTuple):
    access_key_id: str
    secret_access_key: str

    def vars(self, moto_s3: MotoS3, bucket: str, **extra: Any) -> dict[str, Any]:
        return {"s3_bucket_name": bucket, "s3_endpoint_url": moto_s3.url, "s3_region_name": REGION,
                "s3_aws_access_key_id": self.access_key_id, "s3_aws_secret_access_key": self.secret_access_key,
                **extra}


class MotoS3:
    """The running server, an admin client (botocore) and the accounts made on it."""

    def __init__(self, url: str, writer: Account, put_only: Account) -> None:
        self.url = url
        self.writer = writer
        """May do anything in S3."""
        self.put_only = put_only
        """May only ``s3:PutObject`` (cannot list a bucket)."""
        self.client = botocore.session.get_session().create_client(
            "s3", region_name=REGION, endpoint_url=url, aws_access_key_id=writer.access_key_id,
            aws_secret_access_key=writer.secret_access_key)
        self._names = itertools.count()

    def new_bucket(self, stem: str) -> str:
        name = f"{stem}-{next(self._names)}"
        self.client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
        return name

    def keys(self, bucket: str) -> list[str]:
        found = self.client.list_objects_v2(Bucket=bucket).get("Contents", [])
        return sorted(item["Key"] for item in found)

    def body(self, bucket: str, key: str) -> tuple[bytes, str]:
        answer = self.client.get_object(Bucket=bucket, Key=key)
        return answer["Body"].read(), answer["ContentType"]

    def events(self, bucket: str) -> list[dict[str, Any]]:
        return [msgspec.json.decode(line) for key in self.keys(bucket)
                for line in self.body(bucket, key)[0].splitlines()]


def _account(iam: Any, name: str, actions: list[str]) -> Account:
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return Account(key["AccessKeyId"], key["SecretAccessKey"])


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    open_count = moto.settings.INITIAL_NO_AUTH_ACTION_COUNT
    try:
        iam = botocore.session.get_session().create_client(
            "iam", region_name="us-east-1", endpoint_url=url, aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap")
        writer = _account(iam, "writer", ["s3:*"])
        put_only = _account(iam, "put-only", ["s3:PutObject"])
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from here on every request is authenticated
        yield MotoS3(url, writer, put_only)
    finally:
        moto.settings.INITIAL_NO_AUTH_ACTION_COUNT = open_count
        server.stop()


@pytest.fixture
def new_bucket(moto_s3: MotoS3) -> Callable[[str], str]:
    return moto_s3.new_bucket


@pytest.fixture(autouse=True)
async def _close_shared_client() -> AsyncIterator[None]:
    yield
    await S3Sink.shutdown()
