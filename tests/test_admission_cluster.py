"""Admission against a real PostgreSQL the test controls: several instances
sharing one database, and the database going away."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from k8s import admission_review, image_review, pod_spec, provider_request

from client import Client
from helpers import eventually, running_app
from pgcluster import create_database


@contextlib.asynccontextmanager
async def instance(http_client, database_url: str, *options: str) -> AsyncIterator[Client]:
    """One more imagelist instance on the same database, with its own port."""
    async with running_app(database_url, *options) as running:
        yield Client(http_client, running.url)


async def validate(client: Client, image: str) -> bool:
    reply = await client.request(
        "POST", "/admission/validate", admission_review("Pod", pod_spec([image]))
    )
    assert reply.status == 200, reply.body
    return reply.json["response"]["allowed"]


@pytest.mark.gen_test(timeout=60)
async def test_a_write_on_one_instance_decides_the_next_review_on_another(
    http_client, pg_server_url
) -> None:
    url = create_database(pg_server_url, f"imagelist_two_{uuid.uuid4().hex[:8]}")
    async with instance(http_client, url) as one, instance(http_client, url) as two:
        assert await validate(two, "nginx:1.25") is False
        assert (await one.put({"id": "n", "name": "nginx", "tags": ["1.25"]})).status == 200
        assert await validate(two, "nginx:1.25") is True
        assert (await two.get("/allowed?image=docker.io/library/nginx:1.25")).json["allowed"]

        assert (await two.put({"id": "n", "name": "nginx", "tags": ["1.26"]})).status == 200
        # An addition is never denied, not even before its notice arrives...
        assert await validate(one, "nginx:1.26") is True
        # ...a revocation reaches the other instance's replica within 1 s
        # (waited for here with a generous bound; bench/ measures it).
        await eventually(lambda: validate(one, "nginx:1.25"), False)

        assert (await one.delete("/images/n")).status == 204
        await eventually(lambda: validate(two, "nginx:1.26"), False)


async def replica_current(api: Client) -> bool:
    metrics = (await api.get("/metrics")).body.decode()
    return "imagelist_replica_current 1.0" in metrics


@pytest.mark.gen_test(timeout=90)
async def test_database_down_past_replica_max_age_is_a_quick_503_then_recovers(
    http_client, pg_cluster
) -> None:
    # What a replica past --replica-max-age (here 0), or a daemon restarted
    # during the outage, answers; the replica's own answers during an
    # outage are in test_replica_process.py.
    url = create_database(pg_cluster.url(), "imagelist_down")
    async with instance(http_client, url, "--replica-max-age", "0") as api:
        assert (await api.put({"id": "n", "name": "nginx", "tags": ["1.25"]})).status == 200
        assert await validate(api, "nginx:1.25") is True

        pg_cluster.stop()
        await eventually(lambda: replica_current(api), False)
        calls = [
            ("POST", "/admission/validate", admission_review("Pod", pod_spec(["nginx:1.25"]))),
            ("POST", "/admission/imagepolicy", image_review("nginx:1.25")),
            ("POST", "/admission/gatekeeper", provider_request("nginx:1.25")),
            ("GET", "/allowed?image=nginx:1.25", None),
            # Not knowing the digest is not "nothing to pin": the webhook's
            # failurePolicy decides, as for validation.
            ("POST", "/admission/mutate", admission_review("Pod", pod_spec(["nginx:1.25"]))),
            ("POST", "/admission/gatekeeper/mutate", provider_request("nginx:1.25")),
        ]
        for method, path, body in calls:
            # The bound only detects a hang; the API server's own timeout
            # (timeoutSeconds) is what the answer must beat.
            reply = await api.request(method, path, body, timeout=10)
            assert reply.status == 503, (path, reply.body)
            assert reply.headers["Content-Type"] == "application/json"
            assert "database unavailable" in reply.json["error"]
        # Nothing to look up, nothing to fail: a DELETE is still admitted.
        review = admission_review("Pod", pod_spec(["nginx:9"]), operation="DELETE")
        reply = await api.request("POST", "/admission/validate", review)
        assert reply.status == 200 and reply.json["response"]["allowed"] is True
        metrics = (await api.get("/metrics")).body.decode()
        assert 'imagelist_admission_decisions_total{endpoint="validate",result="error"} 1.0' in (
            metrics
        )

        pg_cluster.start()
        pg_cluster.wait_ready()
        for _ in range(50):  # the store retries on use, at most once a second
            reply = await api.request(
                "POST", "/admission/validate", admission_review("Pod", pod_spec(["nginx:1.25"]))
            )
            if reply.status == 200:
                break
            await asyncio.sleep(0.2)
        assert reply.status == 200 and reply.json["response"]["allowed"] is True
