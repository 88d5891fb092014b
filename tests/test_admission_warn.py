"""--admission-mode warn: everything is admitted, would-be denials are
returned (AdmissionReview warnings, ImageReview/Gatekeeper reasons), logged
and counted."""

from __future__ import annotations

import base64
import json

import pytest
import structlog
from k8s import admission_review, image_review, pod_spec, provider_request

OK = "nginx:1.25"
DENIED = "nginx:9.9"


@pytest.fixture
def app_options() -> list[str]:
    return ["--admission-mode", "warn"]


async def post(api, path: str, body) -> dict:
    reply = await api.request("POST", path, body)
    assert reply.status == 200, reply.body
    return reply.json


@pytest.mark.gen_test
async def test_review_admits_and_warns_per_image(api) -> None:
    await api.put({"id": "n", "name": "nginx", "tags": ["1.25"]})
    review = admission_review("Deployment", pod_spec([OK, DENIED], init=["Bad!"]))
    with structlog.testing.capture_logs() as logs:
        answer = await post(api, "/admission/validate", review)
    response = answer["response"]
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is True
    assert "status" not in response
    warnings = response["warnings"]
    assert len(warnings) == 2
    assert all(w.startswith("warn mode, would deny: ") for w in warnings)
    assert any("spec.template.spec.containers[1]" in w and "nginx:9.9" in w for w in warnings)
    assert any("initContainers[0]" in w and "invalid image reference" in w for w in warnings)
    warned = [e for e in logs if e["event"] == "admission_warned"]
    assert len(warned) == 1
    assert warned[0]["uid"] == review["request"]["uid"]
    assert warned[0]["kind"] == "Deployment" and warned[0]["namespace"] == "team-a"
    assert len(warned[0]["denied"]) == 2


@pytest.mark.gen_test
async def test_review_with_only_listed_images_has_no_warnings(api) -> None:
    await api.put({"id": "n", "name": "nginx", "tags": ["1.25"]})
    with structlog.testing.capture_logs() as logs:
        response = (
            await post(api, "/admission/validate", admission_review("Pod", pod_spec([OK])))
        )["response"]
    assert response["allowed"] is True and "warnings" not in response
    assert not [e for e in logs if e["event"].startswith("admission_")]


@pytest.mark.gen_test
async def test_image_review_and_gatekeeper_say_so_in_their_reason(api) -> None:
    status = (await post(api, "/admission/imagepolicy", image_review(DENIED)))["status"]
    assert status["allowed"] is True
    assert status["reason"].startswith("warn mode, would deny: ")
    assert "nginx:9.9" in status["reason"]

    items = (await post(api, "/admission/gatekeeper", provider_request(DENIED)))["response"][
        "items"
    ]
    assert len(items) == 1 and "error" not in items[0]
    assert items[0]["value"]["allowed"] is True
    assert items[0]["value"]["reason"].startswith("warn mode, would deny: ")


@pytest.mark.gen_test
async def test_warned_decisions_are_counted_and_allowed_tells_the_truth(api) -> None:
    await post(api, "/admission/validate", admission_review("Pod", pod_spec([DENIED])))
    # /allowed answers the question; warn mode is about admission only.
    assert (await api.get("/allowed?image=nginx:9.9")).json["allowed"] is False
    text = (await api.get("/metrics")).body.decode()
    assert 'imagelist_admission_decisions_total{endpoint="validate",result="warned"} 1.0' in text
    assert 'imagelist_admission_decisions_total{endpoint="allowed",result="denied"} 1.0' in text


@pytest.mark.gen_test
async def test_pinning_still_happens_and_admits_nothing_new(api) -> None:
    digest = "sha256:" + "7" * 64
    await api.put({"id": f"nginx@{digest}", "name": "nginx", "tags": ["1.25"]})
    review = admission_review("Pod", pod_spec([OK, DENIED]))
    response = (await post(api, "/admission/mutate", review))["response"]
    assert response["allowed"] is True and "warnings" not in response
    patch = json.loads(base64.b64decode(response["patch"]))
    assert patch == [
        {"op": "replace", "path": "/spec/containers/0/image", "value": f"{OK}@{digest}"}
    ]
    items = (await post(api, "/admission/gatekeeper/mutate", provider_request(OK, DENIED)))[
        "response"
    ]["items"]
    assert [item["value"] for item in items] == [f"{OK}@{digest}", DENIED]
