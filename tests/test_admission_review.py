"""POST /admission/validate, /admission/imagepolicy, /admission/gatekeeper,
through the real HTTP app on both backends (enforce mode)."""

from __future__ import annotations

import orjson
import pytest
import structlog
from k8s import KINDS, admission_review, image_review, pod_spec, provider_request, spec_path

H_BUSYBOX = "c3" * 32
H_OTHER = "f6" * 32
ENTRIES = [
    {"id": "nginx-1.25", "name": "nginx", "tags": ["1.25"]},
    {"id": f"sha256:{H_BUSYBOX}", "name": "busybox", "tags": []},
    {"id": "debug-1", "name": "quay.io/tools/debug", "tags": ["1"]},
]
OK_CONTAINER = "nginx:1.25"
OK_INIT = f"docker.io/library/busybox@sha256:{H_BUSYBOX}"
OK_DEBUG = "quay.io/tools/debug:1"
DENIED = "nginx:9.9"
LISTS = ("containers", "initContainers", "ephemeralContainers")

VALIDATE = "/admission/validate"
IMAGEPOLICY = "/admission/imagepolicy"
GATEKEEPER = "/admission/gatekeeper"


async def seed(api) -> None:
    for entry in ENTRIES:
        assert (await api.put(entry)).status == 200


async def post(api, path: str, body) -> dict:
    reply = await api.request("POST", path, body)
    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"] == "application/json"
    return reply.json


def assert_envelope(answer: dict, review: dict) -> dict:
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == review["request"]["uid"]
    return response


def full_spec(**override: list[str]) -> dict:
    lists = {"containers": [OK_CONTAINER], "initContainers": [OK_INIT]}
    lists["ephemeralContainers"] = [OK_DEBUG]
    lists.update(override)
    return pod_spec(lists["containers"], lists["initContainers"], lists["ephemeralContainers"])


# -- AdmissionReview -----------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.gen_test
async def test_every_kind_allowed_when_all_images_are_listed(api, kind: str) -> None:
    await seed(api)
    review = admission_review(kind, full_spec())
    response = assert_envelope(await post(api, VALIDATE, review), review)
    assert response["allowed"] is True
    assert "status" not in response and "warnings" not in response


@pytest.mark.parametrize("where", LISTS)
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.gen_test
async def test_every_kind_and_list_denied(api, kind: str, where: str) -> None:
    await seed(api)
    review = admission_review(kind, full_spec(**{where: [OK_CONTAINER, DENIED]}))
    response = assert_envelope(await post(api, VALIDATE, review), review)
    assert response["allowed"] is False
    status = response["status"]
    assert status["code"] == 403
    message = status["message"]
    assert "1 image(s) not allowed" in message
    assert f"({spec_path(kind)}.{where}[1])" in message
    assert "nginx:9.9 (docker.io/library/nginx:9.9)" in message
    assert "no entry for docker.io/library/nginx lists tag 9.9" in message


@pytest.mark.gen_test
async def test_denial_lists_every_image_not_allowed_and_why(api) -> None:
    await seed(api)
    spec = pod_spec(
        [OK_CONTAINER, "Bad:Ref", f"busybox@sha256:{H_OTHER}"],
        init=["redis:7"],
        ephemeral=[OK_DEBUG],
    )
    review = admission_review("Pod", spec)
    response = assert_envelope(await post(api, VALIDATE, review), review)
    assert response["allowed"] is False
    message = response["status"]["message"]
    assert message.startswith("imagelist: 3 image(s) not allowed: ")
    assert "container c1 (spec.containers[1]): image Bad:Ref: invalid image reference" in message
    assert f"no entry for docker.io/library/busybox has digest sha256:{H_OTHER}" in message
    assert "container init0 (spec.initContainers[0]): image redis:7" in message
    assert "no entry for docker.io/library/redis lists tag 7" in message
    assert OK_CONTAINER not in message and OK_DEBUG not in message


@pytest.mark.gen_test
async def test_denials_are_logged(api) -> None:
    review = admission_review("Job", pod_spec([DENIED]))
    with structlog.testing.capture_logs() as logs:
        await post(api, VALIDATE, review)
    (denied,) = [e for e in logs if e["event"] == "admission_denied"]
    assert denied["uid"] == review["request"]["uid"]
    assert denied["kind"] == "Job" and denied["name"] == "web"
    assert "nginx:9.9" in denied["denied"][0]


@pytest.mark.gen_test
async def test_update_checks_the_new_object(api) -> None:
    await seed(api)
    review = admission_review("Deployment", pod_spec([DENIED]), operation="UPDATE")
    review["request"]["oldObject"]["spec"]["template"]["spec"] = pod_spec([OK_CONTAINER])
    assert (await post(api, VALIDATE, review))["response"]["allowed"] is False


@pytest.mark.gen_test
async def test_delete_and_kinds_without_images_are_allowed(api) -> None:
    review = admission_review("Pod", pod_spec([DENIED]), operation="DELETE")
    assert assert_envelope(await post(api, VALIDATE, review), review)["allowed"] is True
    for kind, obj in (
        ("ConfigMap", {"data": {"image": DENIED}}),
        ("Service", {"spec": {"ports": [{"port": 80}]}}),
        ("Namespace", {}),
    ):
        review = admission_review(kind, obj=obj)
        assert assert_envelope(await post(api, VALIDATE, review), review)["allowed"] is True
    # A "Deployment" of some other API group has no pod template we know.
    review = admission_review("Deployment", pod_spec([DENIED]), group="example.com")
    assert (await post(api, VALIDATE, review))["response"]["allowed"] is True


@pytest.mark.gen_test
async def test_legacy_ephemeral_containers_kind(api) -> None:
    await seed(api)
    obj = {"ephemeralContainers": [{"name": "debug", "image": "busybox:latest"}]}
    review = admission_review("EphemeralContainers", obj=obj, resource="pods")
    response = (await post(api, VALIDATE, review))["response"]
    assert response["allowed"] is False
    assert "(ephemeralContainers[0])" in response["status"]["message"]


@pytest.mark.gen_test
async def test_extensions_group_deployment(api) -> None:
    await seed(api)
    review = admission_review("Deployment", pod_spec([DENIED]), group="extensions")
    assert (await post(api, VALIDATE, review))["response"]["allowed"] is False


def _without_uid(review: dict) -> dict:
    del review["request"]["uid"]
    return review


def _with(review: dict, path: tuple[str, ...], value) -> dict:
    target = review
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return review


MALFORMED_REVIEWS = {
    "not json": b"{'apiVersion':",
    "a list": b"[]",
    "v1beta1": orjson.dumps(
        _with(admission_review("Pod", pod_spec(["a"])), ("apiVersion",), "admission.k8s.io/v1beta1")
    ),
    "wrong kind": orjson.dumps(
        _with(admission_review("Pod", pod_spec(["a"])), ("kind",), "ImageReview")
    ),
    "no request": orjson.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
    "no uid": orjson.dumps(_without_uid(admission_review("Pod", pod_spec(["a"])))),
    "uid not a string": orjson.dumps(
        _with(admission_review("Pod", pod_spec(["a"])), ("request", "uid"), 42)
    ),
    "kind not an object": orjson.dumps(
        _with(admission_review("Pod", pod_spec(["a"])), ("request", "kind"), "Pod")
    ),
    "object a string": orjson.dumps(
        _with(admission_review("Pod", pod_spec(["a"])), ("request", "object"), "pod")
    ),
    "containers not a list": orjson.dumps(
        _with(
            admission_review("Pod", pod_spec(["a"])),
            ("request", "object", "spec"),
            {"containers": {}},
        )
    ),
    "image not a string": orjson.dumps(
        admission_review("Pod", {"containers": [{"name": "a", "image": 7}]})
    ),
    "container not an object": orjson.dumps(admission_review("Pod", {"containers": ["nginx"]})),
    "template not an object": orjson.dumps(
        admission_review("Deployment", obj={"spec": {"template": []}})
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED_REVIEWS))
@pytest.mark.gen_test
async def test_malformed_review_is_400(api, case: str) -> None:
    reply = await api.request("POST", VALIDATE, raw=MALFORMED_REVIEWS[case])
    assert reply.status == 400, reply.body
    assert reply.json["error"]


@pytest.mark.gen_test
async def test_oversized_review_is_413(api) -> None:
    big = admission_review("Pod", pod_spec(["nginx"] * 40000))
    reply = await api.request("POST", VALIDATE, big)
    assert reply.status == 413
    assert "larger than" in reply.json["error"]


@pytest.mark.gen_test
async def test_decisions_are_counted(api) -> None:
    await seed(api)
    await post(api, VALIDATE, admission_review("Pod", pod_spec([OK_CONTAINER])))
    await post(api, VALIDATE, admission_review("Pod", pod_spec([DENIED])))
    await post(api, VALIDATE, admission_review("Pod", pod_spec([DENIED])))
    await api.request("POST", VALIDATE, raw=b"[]")
    await post(api, IMAGEPOLICY, image_review(DENIED))
    await post(api, GATEKEEPER, provider_request(OK_CONTAINER))
    await api.get("/allowed?image=nginx:1.25")
    text = (await api.get("/metrics")).body.decode()
    expected = {
        ("validate", "allowed"): 1,
        ("validate", "denied"): 2,
        ("validate", "error"): 1,
        ("imagepolicy", "denied"): 1,
        ("gatekeeper", "allowed"): 1,
        ("allowed", "allowed"): 1,
    }
    for (endpoint, result), n in expected.items():
        line = (
            f'imagelist_admission_decisions_total{{endpoint="{endpoint}",result="{result}"}} {n}.0'
        )
        assert line in text, line


# -- ImageReview -----------------------------------------------------------------


@pytest.mark.gen_test
async def test_image_review_allowed(api) -> None:
    await seed(api)
    answer = await post(api, IMAGEPOLICY, image_review(OK_CONTAINER, OK_INIT, OK_DEBUG))
    assert answer["apiVersion"] == "imagepolicy.k8s.io/v1alpha1"
    assert answer["kind"] == "ImageReview"
    assert answer["status"]["allowed"] is True
    assert answer["status"]["reason"]
    # No containers: nothing to refuse.
    assert (await post(api, IMAGEPOLICY, image_review()))["status"]["allowed"] is True


@pytest.mark.gen_test
async def test_image_review_denied_names_each_image(api) -> None:
    await seed(api)
    answer = await post(api, IMAGEPOLICY, image_review(OK_CONTAINER, DENIED, "UPPER/Case"))
    status = answer["status"]
    assert status["allowed"] is False
    assert "2 image(s) not allowed" in status["reason"]
    assert "nginx:9.9 (docker.io/library/nginx:9.9): no entry" in status["reason"]
    assert "UPPER/Case: invalid image reference" in status["reason"]


@pytest.mark.parametrize(
    "body",
    [
        {"apiVersion": "imagepolicy.k8s.io/v1alpha1", "kind": "AdmissionReview", "spec": {}},
        {"apiVersion": "imagepolicy.k8s.io/v1", "kind": "ImageReview", "spec": {}},
        {"apiVersion": "imagepolicy.k8s.io/v1alpha1", "kind": "ImageReview"},
        {
            "apiVersion": "imagepolicy.k8s.io/v1alpha1",
            "kind": "ImageReview",
            "spec": {"containers": {}},
        },
        {
            "apiVersion": "imagepolicy.k8s.io/v1alpha1",
            "kind": "ImageReview",
            "spec": {"containers": [{"image": 1}]},
        },
        ["nginx"],
    ],
)
@pytest.mark.gen_test
async def test_malformed_image_review_is_400(api, body) -> None:
    reply = await api.request("POST", IMAGEPOLICY, body)
    assert reply.status == 400
    assert reply.json["error"]


# -- Gatekeeper ------------------------------------------------------------------


@pytest.mark.gen_test
async def test_gatekeeper_one_item_per_key(api) -> None:
    await seed(api)
    keys = [OK_CONTAINER, DENIED, "not a ref", OK_INIT, OK_CONTAINER]
    answer = await post(api, GATEKEEPER, provider_request(*keys))
    assert answer["apiVersion"] == "externaldata.gatekeeper.sh/v1beta1"
    assert answer["kind"] == "ProviderResponse"
    items = answer["response"]["items"]
    assert [i["key"] for i in items] == keys
    ok, denied, invalid, digest, again = items
    assert "error" not in ok and ok["value"]["allowed"] is True
    assert ok["value"]["image"] == "docker.io/library/nginx:1.25"
    assert "nginx-1.25" in ok["value"]["reason"]
    assert denied["value"]["allowed"] is False
    assert "no entry for docker.io/library/nginx lists tag 9.9" in denied["error"]
    assert invalid["value"]["image"] is None
    assert "invalid image reference" in invalid["error"]
    assert digest["value"]["image"] == OK_INIT and "error" not in digest
    assert again == ok
    assert "systemError" not in answer["response"]


@pytest.mark.gen_test
async def test_gatekeeper_v1alpha1_and_empty(api) -> None:
    answer = await post(
        api, GATEKEEPER, provider_request(api="externaldata.gatekeeper.sh/v1alpha1")
    )
    assert answer["apiVersion"] == "externaldata.gatekeeper.sh/v1alpha1"
    assert answer["response"]["items"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"apiVersion": "externaldata.gatekeeper.sh/v1beta1", "kind": "ProviderResponse"},
        {"apiVersion": "v1", "kind": "ProviderRequest", "request": {"keys": []}},
        {"apiVersion": "externaldata.gatekeeper.sh/v1beta1", "kind": "ProviderRequest"},
        {
            "apiVersion": "externaldata.gatekeeper.sh/v1beta1",
            "kind": "ProviderRequest",
            "request": {"keys": "nginx"},
        },
        {
            "apiVersion": "externaldata.gatekeeper.sh/v1beta1",
            "kind": "ProviderRequest",
            "request": {"keys": [None]},
        },
    ],
)
@pytest.mark.gen_test
async def test_malformed_provider_request_is_400(api, body) -> None:
    reply = await api.request("POST", GATEKEEPER, body)
    assert reply.status == 400
    assert reply.json["error"]


@pytest.mark.gen_test
async def test_admission_endpoints_take_post_only(api) -> None:
    for path in (VALIDATE, IMAGEPOLICY, GATEKEEPER):
        reply = await api.get(path)
        assert reply.status == 405
        assert reply.headers["Allow"] == "POST"
