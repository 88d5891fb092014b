"""POST /admission/mutate: tags rewritten to the digest CI recorded, as a
JSONPatch the API server applies. Patches are applied here with a real RFC
6902 library (jsonpatch), on every kind and container list, and the result
goes through /admission/validate as it would in a cluster."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch
import pytest
import structlog
from k8s import KINDS, admission_review, pod_spec, provider_request, spec_path

APP = "quay.io/team/app"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
PINNABLE = f"{APP}:1.4"  # allowed by an entry with a repo-digest id
BY_IMAGE_ID = "myorg/tool:2"  # allowed by an entry with a bare image id
DENIED = "quay.io/team/unknown:1"
HAS_DIGEST = f"{APP}:1.4@{D1}"
LISTS = ("containers", "initContainers", "ephemeralContainers")


async def record(api, image_id: str, name: str, tags: list[str]) -> None:
    reply = await api.put({"id": image_id, "name": name, "tags": tags})
    assert reply.status == 200, reply.body


async def record_entries(api) -> None:
    await record(api, f"{APP}@{D1}", APP, ["1.4"])
    await record(api, "3" * 64, "myorg/tool", ["2"])


async def mutate(api, review: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The webhook's response, and the object after applying its patch."""
    reply = await api.request("POST", "/admission/mutate", review)
    assert reply.status == 200, reply.body
    assert reply.json["apiVersion"] == "admission.k8s.io/v1"
    assert reply.json["kind"] == "AdmissionReview"
    response = reply.json["response"]
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is True  # mutation never denies
    obj = review["request"]["object"]
    if "patch" not in response:
        assert "patchType" not in response
        return response, obj
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"], validate=True))
    assert ops, "an empty patch is sent as no patch"
    for op in ops:
        assert op["op"] == "replace" and op["path"].endswith("/image"), op
    return response, jsonpatch.apply_patch(obj, ops)


async def validate(api, review: dict[str, Any]) -> dict[str, Any]:
    reply = await api.request("POST", "/admission/validate", review)
    assert reply.status == 200, reply.body
    return reply.json["response"]


def images_of(kind: str, pinned: str) -> dict[str, list[str]]:
    """A fixture per container list: the pinnable image in `pinned`, images
    that must stay as they are everywhere."""
    return {
        name: (
            [DENIED, PINNABLE, BY_IMAGE_ID, HAS_DIGEST, PINNABLE]
            if name == pinned
            else [BY_IMAGE_ID, HAS_DIGEST]
        )
        for name in LISTS
    }


def build(kind: str, lists: dict[str, list[str]]) -> dict[str, Any]:
    return admission_review(
        kind,
        pod_spec(
            lists["containers"],
            init=lists["initContainers"],
            ephemeral=lists["ephemeralContainers"],
        ),
    )


FIXTURES = [(kind, pinned) for kind in KINDS for pinned in LISTS]


@pytest.mark.gen_test
@pytest.mark.parametrize(("kind", "pinned"), FIXTURES)
async def test_the_patch_pins_exactly_the_images_allowed_by_tag(
    api, kind: str, pinned: str
) -> None:
    await record_entries(api)
    lists = images_of(kind, pinned)
    review = build(kind, lists)
    response, patched = await mutate(api, review)

    expected_lists = copy.deepcopy(lists)
    expected_lists[pinned] = [
        f"{PINNABLE}@{D1}" if image == PINNABLE else image for image in lists[pinned]
    ]
    expected = build(kind, expected_lists)["request"]["object"]
    assert patched == expected
    assert patched != review["request"]["object"]
    patch = json.loads(base64.b64decode(response["patch"]))
    prefix = "/" + spec_path(kind).replace(".", "/")
    assert sorted(op["path"] for op in patch) == [
        f"{prefix}/{pinned}/1/image",
        f"{prefix}/{pinned}/4/image",
    ]

    # Reinvocation (reinvocationPolicy: IfNeeded) changes nothing more.
    again = copy.deepcopy(review)
    again["request"]["object"] = patched
    response, unchanged = await mutate(api, again)
    assert "patch" not in response and unchanged == patched

    # Validation runs after mutation: the pinned object is admitted, since
    # the digest is the entry's; the not-allowed image still is not.
    answer = await validate(api, again)
    assert answer["allowed"] is False
    assert "1 image(s) not allowed" in answer["status"]["message"]
    assert DENIED in answer["status"]["message"]


@pytest.mark.gen_test
async def test_legacy_ephemeral_containers_kind_is_pinned(api) -> None:
    await record_entries(api)
    obj = {"ephemeralContainers": [{"name": "debug", "image": PINNABLE}]}
    review = admission_review("EphemeralContainers", obj=obj, operation="UPDATE")
    review["request"]["oldObject"] = {"ephemeralContainers": []}
    _, patched = await mutate(api, review)
    assert patched["ephemeralContainers"][0]["image"] == f"{PINNABLE}@{D1}"


@pytest.mark.gen_test
async def test_nothing_to_pin_means_no_patch(api) -> None:
    await record_entries(api)
    for images in ([BY_IMAGE_ID], [DENIED], [HAS_DIGEST], ["Not A Reference"], []):
        review = admission_review("Deployment", pod_spec(images))
        _, obj = await mutate(api, review)
        assert obj == review["request"]["object"]
    for kind_review in (
        admission_review("ConfigMap", obj={"data": {"image": PINNABLE}}),
        admission_review("Pod", pod_spec([PINNABLE]), operation="DELETE"),
        admission_review("Pod", operation="CONNECT", obj={"spec": pod_spec([PINNABLE])}),
    ):
        response, _ = await mutate(api, kind_review)
        assert "patch" not in response


@pytest.mark.gen_test
async def test_mutate_then_validate_through_a_repush(api) -> None:
    """The case pinning exists for: the tag is re-pointed after CI recorded it."""
    await record_entries(api)
    review = admission_review("Deployment", pod_spec([PINNABLE]))
    _, pinned = await mutate(api, review)
    image = pinned["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"{PINNABLE}@{D1}"
    review["request"]["object"] = pinned
    assert (await validate(api, review))["allowed"] is True

    # Someone re-pushes 1.4 and deploys it by digest: not on the list.
    pushed = admission_review("Pod", pod_spec([f"{PINNABLE}@{D2}"]))
    assert (await mutate(api, pushed))[1] == pushed["request"]["object"]
    assert (await validate(api, pushed))["allowed"] is False

    # CI records the new content instead and retires the old entry: the
    # object pinned to the old digest is refused, a fresh deploy pins anew.
    await record(api, f"{APP}@{D2}", APP, ["1.4"])
    assert (await api.delete(f"/images/{APP}@{D1}")).status == 204
    answer = await validate(api, review)
    assert answer["allowed"] is False and D1 in answer["status"]["message"]
    _, repinned = await mutate(api, admission_review("Deployment", pod_spec([PINNABLE])))
    assert repinned["spec"]["template"]["spec"]["containers"][0]["image"] == f"{PINNABLE}@{D2}"


@pytest.mark.gen_test
async def test_the_newest_pinning_entry_wins_and_other_repositories_never_pin(api) -> None:
    await record(api, f"{APP}@{D1}", APP, ["1.4"])
    await record(api, f"quay.io/other/app@{D2}", APP, ["1.4"])  # allows, cannot pin
    await record(api, "4" * 64, APP, ["1.4"])  # allows, cannot pin
    _, obj = await mutate(api, admission_review("Pod", pod_spec([PINNABLE])))
    assert obj["spec"]["containers"][0]["image"] == f"{PINNABLE}@{D1}"
    await record(api, f"{APP}@{D2}", APP, ["1.4"])
    _, obj = await mutate(api, admission_review("Pod", pod_spec([PINNABLE])))
    assert obj["spec"]["containers"][0]["image"] == f"{PINNABLE}@{D2}"


@pytest.mark.gen_test
async def test_update_pins_only_images_that_change(api) -> None:
    await record_entries(api)
    # An unrelated edit (a label) must not restart containers or roll out.
    review = admission_review("Pod", pod_spec([PINNABLE]), operation="UPDATE")
    review["request"]["object"]["metadata"]["labels"] = {"touched": "yes"}
    response, _ = await mutate(api, review)
    assert "patch" not in response

    deploy = admission_review("Deployment", pod_spec([PINNABLE, BY_IMAGE_ID]), operation="UPDATE")
    deploy["request"]["oldObject"]["spec"]["template"]["spec"]["containers"][0]["image"] = (
        f"{APP}:1.3"
    )
    _, obj = await mutate(api, deploy)
    assert [c["image"] for c in obj["spec"]["template"]["spec"]["containers"]] == [
        f"{PINNABLE}@{D1}",
        BY_IMAGE_ID,
    ]

    # kubectl debug: the pods/ephemeralcontainers subresource may change
    # nothing but ephemeral containers, so only the new one is pinned.
    debug = admission_review("Pod", pod_spec([PINNABLE], ephemeral=[PINNABLE]), operation="UPDATE")
    debug["request"]["subResource"] = "ephemeralcontainers"
    debug["request"]["oldObject"]["spec"]["ephemeralContainers"] = []
    response, obj = await mutate(api, debug)
    assert json.loads(base64.b64decode(response["patch"])) == [
        {"op": "replace", "path": "/spec/ephemeralContainers/0/image", "value": f"{PINNABLE}@{D1}"}
    ]

    # Server-side apply of the manifest's tag over a pinned object pins again.
    pod = admission_review("Pod", pod_spec([PINNABLE]), operation="UPDATE")
    pod["request"]["oldObject"]["spec"]["containers"][0]["image"] = f"{PINNABLE}@{D1}"
    _, obj = await mutate(api, pod)
    assert obj["spec"]["containers"][0]["image"] == f"{PINNABLE}@{D1}"


@pytest.mark.gen_test
async def test_controller_made_workloads_keep_their_owners_template(api) -> None:
    await record_entries(api)
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u1"}
    replica_set = admission_review("ReplicaSet", pod_spec([PINNABLE]))
    replica_set["request"]["object"]["metadata"]["ownerReferences"] = [
        {**owner, "controller": True}
    ]
    response, _ = await mutate(api, replica_set)
    assert "patch" not in response
    # An owner that is not the controller does not make the template its.
    replica_set["request"]["object"]["metadata"]["ownerReferences"] = [owner]
    assert "patch" in (await mutate(api, replica_set))[0]
    # Pods are pinned whoever made them.
    pod = admission_review("Pod", pod_spec([PINNABLE]))
    pod["request"]["object"]["metadata"]["ownerReferences"] = [
        {**owner, "kind": "ReplicaSet", "controller": True}
    ]
    _, obj = await mutate(api, pod)
    assert obj["spec"]["containers"][0]["image"] == f"{PINNABLE}@{D1}"


@pytest.mark.gen_test
async def test_a_pin_is_logged_once_per_object_and_counted(api) -> None:
    await record_entries(api)
    review = admission_review("Deployment", pod_spec([PINNABLE, DENIED], init=[PINNABLE]))
    with structlog.testing.capture_logs() as logs:
        await mutate(api, review)
        await mutate(api, admission_review("Pod", pod_spec([DENIED])))
    (line,) = [e for e in logs if e["event"] == "admission_pinned"]
    assert line["endpoint"] == "mutate"
    assert line["uid"] == review["request"]["uid"]
    assert (line["kind"], line["namespace"], line["name"]) == ("Deployment", "team-a", "web")
    assert line["operation"] == "CREATE"
    assert line["pins"] == [
        {
            "location": "spec.template.spec.initContainers[0]",
            "image": PINNABLE,
            "digest": D1,
        },
        {"location": "spec.template.spec.containers[0]", "image": PINNABLE, "digest": D1},
    ]
    assert line["pins_total"] == 2
    metrics = (await api.get("/metrics")).body.decode()
    assert 'imagelist_admission_pins_total{endpoint="mutate"} 2.0' in metrics
    assert 'imagelist_admission_pins_total{endpoint="gatekeeper_mutate"} 0.0' in metrics
    assert 'imagelist_admission_decisions_total{endpoint="mutate",result="allowed"} 2.0' in metrics


@pytest.mark.gen_test
async def test_a_pod_with_hundreds_of_pins_logs_a_bounded_line(api) -> None:
    await record_entries(api)
    review = admission_review("Pod", pod_spec([PINNABLE] * 300))
    with structlog.testing.capture_logs() as logs:
        _, obj = await mutate(api, review)
    assert [c["image"] for c in obj["spec"]["containers"]] == [f"{PINNABLE}@{D1}"] * 300
    (line,) = [e for e in logs if e["event"] == "admission_pinned"]
    assert line["pins_total"] == 300 and len(line["pins"]) == 100
    assert len(json.dumps(line)) < 48 * 1024


@pytest.mark.gen_test
async def test_malformed_reviews_are_400_and_change_nothing(api) -> None:
    await record_entries(api)
    good = admission_review("Pod", pod_spec([PINNABLE]), operation="UPDATE")
    cases = []
    for field, value in (("object", []), ("oldObject", "x"), ("uid", ""), ("operation", "X")):
        bad = copy.deepcopy(good)
        bad["request"][field] = value
        cases.append(bad)
    bad = copy.deepcopy(good)
    bad["request"]["oldObject"]["spec"]["containers"] = {"not": "a list"}
    cases.append(bad)
    for body in cases:
        reply = await api.request("POST", "/admission/mutate", body)
        assert reply.status == 400, reply.body
        assert reply.json["error"]
    metrics = (await api.get("/metrics")).body.decode()
    assert 'imagelist_admission_pins_total{endpoint="mutate"} 0.0' in metrics
    assert (
        f'imagelist_admission_decisions_total{{endpoint="mutate",result="error"}} {len(cases)}.0'
        in (metrics)
    )


async def provide(api, *keys: str) -> dict[str, Any]:
    reply = await api.request("POST", "/admission/gatekeeper/mutate", provider_request(*keys))
    assert reply.status == 200, reply.body
    assert reply.json["kind"] == "ProviderResponse"
    return reply.json["response"]


@pytest.mark.gen_test
async def test_gatekeeper_mutation_answers_each_key_with_its_pinned_value(api) -> None:
    await record_entries(api)
    keys = [
        PINNABLE,
        BY_IMAGE_ID,
        DENIED,
        HAS_DIGEST,
        "Not A Reference",
        PINNABLE,
        "quay.io/team/app",
    ]
    with structlog.testing.capture_logs() as logs:
        response = await provide(api, *keys)
    # Gatekeeper refuses to mutate with a provider that is not idempotent.
    assert response["idempotent"] is True
    assert response["items"] == [
        {"key": PINNABLE, "value": f"{PINNABLE}@{D1}"},
        {"key": BY_IMAGE_ID, "value": BY_IMAGE_ID},
        {"key": DENIED, "value": DENIED},  # no error: denying is the constraint's job
        {"key": HAS_DIGEST, "value": HAS_DIGEST},
        {"key": "Not A Reference", "value": "Not A Reference"},
        {"key": PINNABLE, "value": f"{PINNABLE}@{D1}"},
        {"key": "quay.io/team/app", "value": "quay.io/team/app"},  # :latest is not listed
    ]
    # Idempotent: each answer, asked again, answers itself.
    again = await provide(api, *[item["value"] for item in response["items"]])
    assert all(item["key"] == item["value"] for item in again["items"])
    (line,) = [e for e in logs if e["event"] == "admission_pinned"]
    assert line["endpoint"] == "gatekeeper_mutate"
    assert line["pins"] == [{"image": PINNABLE, "digest": D1}]
    metrics = (await api.get("/metrics")).body.decode()
    assert 'imagelist_admission_pins_total{endpoint="gatekeeper_mutate"} 2.0' in metrics
    assert (await provide(api))["items"] == []


@pytest.mark.gen_test
async def test_gatekeeper_mutation_rejects_what_is_not_a_provider_request(api) -> None:
    for body in (
        provider_request(PINNABLE, api="externaldata.gatekeeper.sh/v9"),
        {"apiVersion": "externaldata.gatekeeper.sh/v1beta1", "kind": "ProviderRequest"},
        {**provider_request(), "request": {"keys": [5]}},
    ):
        reply = await api.request("POST", "/admission/gatekeeper/mutate", body)
        assert reply.status == 400, reply.body
