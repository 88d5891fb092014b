"""GET /metrics: scraped over HTTP, parsed with prometheus-client's parsers,
linted with promtool (Debian package `prometheus`)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from contextlib import closing

import pytest
from k8s import admission_review, pod_spec
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from tornado.httpclient import AsyncHTTPClient

from client import Client
from helpers import running_app
from pgcluster import create_database


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    found = [
        s.value for s in samples(text) if s.name == name and labels.items() <= s.labels.items()
    ]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install the Debian package `prometheus`"
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


async def scrape(api, accept: str | None = None) -> str:
    reply = await api.get("/metrics", headers={"Accept": accept} if accept else None)
    assert reply.status == 200, reply.body
    return reply.body.decode()


@pytest.mark.gen_test
async def test_requests_are_counted_by_route_template_method_and_status(api) -> None:
    digest = "quay.io/foo/nginx@sha256:" + "a" * 64
    assert (await api.put({"id": digest, "name": "quay.io/foo/nginx"})).status == 200
    assert (await api.get("/images/" + digest)).status == 200
    assert (await api.get("/images/missing")).status == 404
    assert (await api.get("/images?sort=bogus")).status == 400
    assert (await api.get("/no/such/endpoint")).status == 404
    text = await scrape(api)

    total = "imagelist_http_requests_total"
    assert value(text, total, route="/images", method="PUT", status="200") == 1
    assert value(text, total, route="/images/{id}", method="GET", status="200") == 1
    assert value(text, total, route="/images/{id}", method="GET", status="404") == 1
    assert value(text, total, route="/images", method="GET", status="400") == 1
    assert value(text, total, route="unmatched", method="GET", status="404") == 1
    latency = "imagelist_http_request_duration_seconds_count"
    assert value(text, latency, route="/images/{id}", method="GET", status="200") == 1
    # Never the raw id or path: label cardinality stays bounded.
    assert "sha256" not in text and "missing" not in text and "/no/such" not in text
    # The scrape itself is the request in flight.
    assert value(text, "imagelist_http_requests_in_flight") == 1


@pytest.mark.gen_test
async def test_storage_reports_query_latency_pool_and_stored_images(api, ctx) -> None:
    for n in range(3):
        await api.put({"id": f"id{n}", "name": "myorg/app"})
    await api.get("/images/id0")
    await api.get("/images/nope")
    text = await scrape(api)

    queries = "imagelist_db_query_duration_seconds_count"
    assert value(text, queries, operation="put", outcome="ok") == 3
    # A miss is an answer, not a database failure.
    assert value(text, queries, operation="get", outcome="ok") == 2
    assert value(text, "imagelist_images_stored") == 3
    assert value(text, "imagelist_database_up") == 1
    size = value(text, "imagelist_db_pool_connections")
    assert 1 <= size <= value(text, "imagelist_db_pool_connections_max")
    # Only the scrape's own count query could be running, and it is done.
    assert value(text, "imagelist_db_pool_connections_in_use") == 0
    # Each operation ran alone: none waited for a connection.
    assert value(text, "imagelist_db_pool_waits_total") == 0
    info = [s for s in samples(text) if s.name == "imagelist_build_info"]
    assert len(info) == 1 and info[0].value == 1 and {"version", "python"} <= info[0].labels.keys()


@pytest.mark.parametrize("app_options", [["--db-pool-size", "1"]])
@pytest.mark.gen_test
async def test_pool_waits_are_counted_when_every_connection_is_busy(ctx, api) -> None:
    # One connection (SQLite always has one): concurrent operations queue.
    await api.put({"id": "x", "name": "n"})
    before = value(await scrape(api), "imagelist_db_pool_waits_total")
    await asyncio.gather(*(ctx.storage.count() for _ in range(5)))
    after = value(await scrape(api), "imagelist_db_pool_waits_total")
    assert after - before >= 4


@pytest.mark.gen_test
async def test_scrape_passes_promtool_and_names_follow_conventions(api, ctx) -> None:
    await api.put({"id": "a", "name": "n"})
    await api.get("/images/a")
    # Fill the families other features feed, so their samples are linted too:
    # an admission answered by the app itself, and a token reload.
    review = admission_review("Pod", pod_spec(["n:latest"]))
    assert (await api.request("POST", "/admission/validate", review)).status == 200
    ctx.metrics.token_reloads.inc()
    text = await scrape(api)
    promtool_check(text)
    decided = "imagelist_admission_decisions_total"
    assert value(text, decided, endpoint="validate", result="denied") == 1
    assert value(text, "process_resident_memory_bytes") > 0
    assert [s.labels["implementation"] for s in samples(text) if s.name == "python_info"] == [
        "CPython"
    ]
    for family in text_string_to_metric_families(text):
        # Ours, and prometheus-client's standard process and platform families.
        assert family.name.startswith(("imagelist_", "process_", "python_")), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name


@pytest.mark.gen_test
async def test_openmetrics_when_the_scraper_asks(api) -> None:
    await api.put({"id": "a", "name": "n"})
    reply = await api.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
    text = reply.body.decode()
    assert text.endswith("# EOF\n")
    names = {f.name for f in openmetrics_families(text)}
    assert {"imagelist_http_requests", "imagelist_images_stored"} <= names
    plain = await api.get("/metrics")
    assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")


@pytest.mark.gen_test(timeout=60)
async def test_stored_images_keep_last_value_while_database_is_down(pg_cluster, io_loop) -> None:
    url = create_database(pg_cluster.url(), "imagelist_metrics")
    http = AsyncHTTPClient(force_instance=True)
    with closing(http):
        async with running_app(url) as running:
            api = Client(http, running.url)
            for n in range(2):
                assert (await api.put({"id": str(n), "name": "n"})).status == 200
            assert value(await scrape(api), "imagelist_images_stored") == 2
            pg_cluster.stop("immediate")
            text = await scrape(api)  # still 200, and promptly (bounded count)
            assert value(text, "imagelist_images_stored") == 2
            assert value(text, "imagelist_database_up") == 0
            assert value(text, "imagelist_db_pool_connections") == 0
            errors = value(
                text,
                "imagelist_db_query_duration_seconds_count",
                operation="count",
                outcome="error",
            )
            assert errors >= 1


# Tornado accepts any token as a method and answers 405; the method went
# into the request metrics' labels as sent, so anyone could grow /metrics
# (and the daemon's memory) by one series per made-up method name.
@pytest.mark.gen_test
async def test_made_up_methods_do_not_add_metric_series(api) -> None:
    for n in range(5):
        reply = await api.request(f"X-MADE-UP-{n}", "/images")
        assert reply.status == 405
    await api.get("/images")
    text = (await api.get("/metrics")).body.decode()
    series = [
        line for line in text.splitlines() if line.startswith("imagelist_http_requests_total")
    ]
    assert not any("X-MADE-UP" in line for line in series), series
    assert any('method="OTHER",route="/images",status="405"} 5.0' in line for line in series)
    assert any('method="GET",route="/images",status="200"} 1.0' in line for line in series)
