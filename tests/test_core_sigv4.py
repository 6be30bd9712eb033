"""The gateway's SigV4 signer (``sluicegate.providers.aws_auth.sigv4_headers``) held byte-equal to botocore's.

Every generated request is signed twice with the clock frozen at the same instant: by ``sigv4_headers`` and by
botocore's ``SigV4Auth.add_auth``; the whole header set (names, order, values: ``X-Amz-Date``,
``X-Amz-Security-Token``, ``Authorization``, a given ``X-Amz-Content-SHA256``) must be identical. The inputs cover
what Bedrock URLs hold (model ids with ``:`` and ``/``, percent-encoded or not, inference-profile ARNs), query
strings, dot segments and doubled slashes, ports, session tokens, regions, services, header names in any case,
values with runs of spaces, headers SigV4 leaves unsigned, empty and binary bodies, and dates across years.
"""

from __future__ import annotations

import datetime
import hashlib
import random
import string
from urllib.parse import quote

import botocore.auth
import pytest
from botocore.credentials import Credentials

from sluicegate.providers import aws_auth
from sluicegate.providers.aws_auth import botocore_sigv4_headers, sign_headers, sigv4_headers
from sluicegate.net.http import encode_headers

MODEL_IDS = ["anthropic.claude-3-5-sonnet-20240620-v1:0", "us.anthropic.claude-sonnet-4-20250514-v1:0",
             "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-2-11b-instruct-v1:0",
             "amazon.nova-pro-v1:0", "cohere.command-r-v1:0", "model with space~and*star(1)", "a/../b/./c"]
REGIONS = ["us-east-1", "us-west-2", "eu-central-1", "ap-northeast-1", "us-gov-west-1", "cn-north-1"]
SERVICES = ["bedrock", "sts", "execute-api"]
HOSTS = ["https://bedrock-runtime.{region}.amazonaws.com", "http://127.0.0.1:8080", "https://Bedrock.Example.COM",
         "https://bedrock-runtime.{region}.amazonaws.com:443", "http://localhost:80", "https://vpce-1.example.com:8443"]
QUERIES = ["", "?a=1", "?b=2&a=1", "?a=2&a=1", "?x", "?Action=AssumeRole&Version=2011-06-15",
           "?prefix=a%2Fb&max-keys=5", "?z=&y=%20"]


def random_request(rng: random.Random) -> dict:
    region = rng.choice(REGIONS)
    model = rng.choice(MODEL_IDS)
    model_path = quote(model, safe="") if rng.random() < 0.7 else quote(model, safe=":/")
    tail = rng.choice(["/converse", "/converse-stream", "/invoke", "/invoke-with-response-stream", "/", ""])
    prefix = rng.choice(["/model/", "/model//", "/v1/./model/", "/x/../model/"])
    url = rng.choice(HOSTS).format(region=region) + prefix + model_path + tail + rng.choice(QUERIES)
    headers: dict[str, str] = {}
    for name, value in (("Content-Type", "application/json"), ("Accept", "application/vnd.amazon.eventstream"),
                        ("X-Amzn-Bedrock-Trace", "ENABLED"), ("user-agent", "sluicegate/1"),
                        ("X-Custom", "  a   b  c "), ("anthropic-beta", "a,b"),
                        ("X-Amzn-Trace-Id", "Root=1-2-3")):
        if rng.random() < 0.5:
            headers[rng.choice([name, name.lower(), name.upper()])] = value
    method = rng.choice(["POST", "POST", "GET"])
    payload = b"" if method == "GET" or rng.random() < 0.1 else bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    if rng.random() < 0.15:
        headers["X-Amz-Content-SHA256"] = hashlib.sha256(payload).hexdigest() if rng.random() < 0.5 else "UNSIGNED-PAYLOAD"
    token = rng.choice([None, None, "", "FwoGZXIvYXdzEJr//////////wEaD" + "".join(rng.choices(string.ascii_letters, k=40))])
    secret = "".join(rng.choices(string.ascii_letters + string.digits + "+/", k=40))
    when = datetime.datetime(2020, 1, 1) + datetime.timedelta(seconds=rng.randrange(0, 8 * 365 * 86400))
    return {"method": method, "url": url, "headers": headers, "payload": payload, "token": token,
            "access_key": "AKIA" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=16)),
            "secret": rng.choice([secret, "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"]), "region": region,
            "service": rng.choice(SERVICES), "when": when}


def botocore_at(monkeypatch, request: dict) -> dict[str, str]:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda remove_tzinfo=True: request["when"])
    credentials = Credentials(request["access_key"], request["secret"], request["token"])
    return botocore_sigv4_headers(credentials, request["service"], request["region"], request["method"],
                                  request["url"], request["payload"], request["headers"])


def ours_at(request: dict) -> dict[str, str] | None:
    epoch = request["when"].replace(tzinfo=datetime.timezone.utc).timestamp()
    return sigv4_headers(request["access_key"], request["secret"], request["token"], request["service"],
                         request["region"], request["method"], request["url"], request["payload"],
                         request["headers"], now=epoch)


def test_headers_are_byte_equal_to_botocores_for_generated_requests(monkeypatch) -> None:
    rng = random.Random(20261203)
    fast = 0
    for n in range(3000):
        request = random_request(rng)
        ours = ours_at(request)
        assert ours is not None, request  # every generated request is of the gateway's shape
        expected = botocore_at(monkeypatch, request)
        assert list(ours.items()) == list(expected.items()), (n, request)
        assert encode_headers(ours) == encode_headers(expected)
        fast += 1
    assert fast == 3000
    # the signing-key cache holds one key per (secret, date, region, service), and stays bounded
    assert 0 < len(aws_auth._signing_keys) <= aws_auth._MAX_CACHED


def test_a_changed_byte_changes_the_signature(monkeypatch) -> None:
    """The negative control: the comparison above can fail, and what is signed is what is sent."""
    request = random_request(random.Random(7)) | {"method": "POST", "payload": b'{"messages":[]}', "headers": {}}
    base = ours_at(request)["Authorization"]
    for change in ({"payload": b'{"messages":[ ]}'}, {"url": request["url"] + "x"}, {"region": "us-east-2"},
                   {"service": "bedrock-runtime"}, {"token": "other"}, {"headers": {"Accept": "x"}},
                   {"when": request["when"] + datetime.timedelta(seconds=1)}, {"secret": request["secret"] + "x"}):
        changed = request | change
        ours = ours_at(changed)
        assert ours["Authorization"] != base, change
        assert ours == botocore_at(monkeypatch, changed)


def test_the_cached_signing_key_is_per_secret_date_region_and_service(monkeypatch) -> None:
    aws_auth._signing_keys.clear()
    request = random_request(random.Random(11)) | {"token": None, "service": "bedrock", "region": "us-east-1"}
    ours_at(request)
    ours_at(request | {"payload": b"other"})
    assert len(aws_auth._signing_keys) == 1  # the same key served the second request
    for change in ({"secret": "another-secret"}, {"when": request["when"] + datetime.timedelta(days=1)},
                   {"region": "sa-east-1"}, {"service": "sts"}):
        before = len(aws_auth._signing_keys)
        assert ours_at(request | change) == botocore_at(monkeypatch, request | change)
        assert len(aws_auth._signing_keys) == before + 1, change


@pytest.mark.parametrize("change", [
    {"method": "PUT"}, {"method": "DELETE"}, {"headers": {"Date": "Thu, 03 Dec 2026 16:00:00 GMT"}},
    {"headers": {"Authorization": "stale"}}, {"headers": {"X-Amz-Date": "20200101T000000Z"}},
    {"headers": {"Content-Type": "application/json", "content-type": "text/plain"}},
    {"headers": {"X-Name": "caf\u00e9"}}, {"url": "https://[::1]:8443/model/m/converse"},
    {"url": "https://user:pw@bedrock.example.com/model/m/converse"}, {"url": "ftp://example.com/model/m"},
    {"url": "https://example.com/model/caf\u00e9/converse"}])
def test_requests_outside_the_shape_are_signed_by_botocore(monkeypatch, change) -> None:
    request = random_request(random.Random(3)) | change
    assert ours_at(request) is None
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda remove_tzinfo=True: request["when"])
    monkeypatch.setattr(aws_auth.time, "time",
                        lambda: request["when"].replace(tzinfo=datetime.timezone.utc).timestamp())
    credentials = Credentials(request["access_key"], request["secret"], request["token"])
    try:
        expected = encode_headers(botocore_at(monkeypatch, request))
    except ValueError:  # a header encode_headers refuses either way
        return
    assert sign_headers(credentials, request["service"], request["region"], request["url"], request["payload"],
                        request["headers"], method=request["method"]) == expected


def test_sign_headers_uses_the_fast_path_and_matches_botocore(monkeypatch) -> None:
    request = random_request(random.Random(5)) | {"method": "POST", "headers": {"Content-Type": "application/json"}}
    now = request["when"].replace(tzinfo=datetime.timezone.utc).timestamp()
    monkeypatch.setattr(aws_auth.time, "time", lambda: now)
    calls = []
    monkeypatch.setattr(aws_auth, "botocore_sigv4_headers", lambda *a: calls.append(a))
    credentials = Credentials(request["access_key"], request["secret"], request["token"])
    signed = sign_headers(credentials, request["service"], request["region"], request["url"], request["payload"],
                          request["headers"])
    assert calls == []  # botocore was not asked
    monkeypatch.undo()
    assert signed == encode_headers(botocore_at(monkeypatch, request))
