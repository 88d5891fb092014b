"""examples/kubernetes: the manifests parse, carry the settings the README
promises, and point at routes the app really serves (checked through the
real HTTP app); the Gatekeeper Rego is evaluated with a Rego engine."""

from __future__ import annotations

import base64
import copy
import json
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml
from k8s import KINDS, admission_review, image_review, pod_spec, provider_request

from handlers.workloads import CONTAINER_LISTS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "kubernetes"


def load_all(name: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((EXAMPLES / name).read_text()))


def load(name: str) -> dict[str, Any]:
    docs = load_all(name)
    assert len(docs) == 1, name
    return docs[0]


@pytest.fixture(scope="module")
def webhook() -> dict[str, Any]:
    return load("validating-webhook.yaml")


def test_every_example_is_yaml() -> None:
    files = sorted(EXAMPLES.rglob("*.yaml"))
    assert len(files) == 9
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] and doc["kind"], path


def test_validating_webhook(webhook) -> None:
    assert webhook["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert webhook["kind"] == "ValidatingWebhookConfiguration"
    (hook,) = webhook["webhooks"]
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "None"
    assert hook["failurePolicy"] == "Fail"
    assert isinstance(hook["timeoutSeconds"], int) and 1 <= hook["timeoutSeconds"] <= 30
    service = hook["clientConfig"]["service"]
    assert service["path"] == "/admission/validate"
    (expression,) = hook["namespaceSelector"]["matchExpressions"]
    assert expression["key"] == "kubernetes.io/metadata.name"
    assert expression["operator"] == "NotIn"
    assert set(expression["values"]) == {"kube-system", service["namespace"]}


def test_mutating_webhook_pins_what_the_validating_one_checks(webhook) -> None:
    mutating = load("mutating-webhook.yaml")
    assert mutating["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert mutating["kind"] == "MutatingWebhookConfiguration"
    (hook,) = mutating["webhooks"]
    (checks,) = webhook["webhooks"]
    assert hook["clientConfig"]["service"]["path"] == "/admission/mutate"
    # A sidecar injected by a later webhook gets pinned too.
    assert hook["reinvocationPolicy"] == "IfNeeded"
    # The same exemptions, failure policy, timeout and kinds as validation.
    for key in (
        "admissionReviewVersions",
        "sideEffects",
        "failurePolicy",
        "timeoutSeconds",
        "matchPolicy",
        "namespaceSelector",
        "rules",
    ):
        assert hook[key] == checks[key], key
    service = {k: v for k, v in hook["clientConfig"]["service"].items() if k != "path"}
    assert service == {k: v for k, v in checks["clientConfig"]["service"].items() if k != "path"}
    assert mutating["metadata"]["annotations"] == webhook["metadata"]["annotations"]


def test_webhook_rules_cover_every_kind_imagelist_checks(webhook) -> None:
    (hook,) = webhook["webhooks"]
    covered = set()
    for rule in hook["rules"]:
        assert rule["operations"] == ["CREATE", "UPDATE"]  # DELETE starts nothing
        for group in rule["apiGroups"]:
            covered.update((group, resource) for resource in rule["resources"])
    wanted = {(group, resource) for group, _, resource, _ in KINDS.values()}
    wanted.add(("", "pods/ephemeralcontainers"))  # kubectl debug
    assert covered == wanted


def test_image_policy_configuration() -> None:
    config = load("imagepolicy/admission-configuration.yaml")
    assert config["apiVersion"] == "apiserver.config.k8s.io/v1"
    assert config["kind"] == "AdmissionConfiguration"
    (plugin,) = config["plugins"]
    assert plugin["name"] == "ImagePolicyWebhook"
    policy = plugin["configuration"]["imagePolicy"]
    assert policy["defaultAllow"] is False
    assert policy["allowTTL"] == policy["denyTTL"] == -1  # -1: no cache
    assert Path(policy["kubeConfigFile"]).name == "kubeconfig.yaml"
    kubeconfig = load("imagepolicy/kubeconfig.yaml")
    assert kubeconfig["kind"] == "Config"
    (cluster,) = kubeconfig["clusters"]
    server = urllib.parse.urlsplit(cluster["cluster"]["server"])
    assert server.scheme == "https"
    assert server.path == "/admission/imagepolicy"
    (context,) = kubeconfig["contexts"]
    assert kubeconfig["current-context"] == context["name"]
    assert context["context"]["cluster"] == cluster["name"]
    assert context["context"]["user"] in {u["name"] for u in kubeconfig["users"]}


def test_gatekeeper_provider_template_and_constraint() -> None:
    provider = load("gatekeeper/provider.yaml")
    assert provider["apiVersion"] == "externaldata.gatekeeper.sh/v1beta1"
    assert provider["kind"] == "Provider"
    url = urllib.parse.urlsplit(provider["spec"]["url"])
    assert url.scheme == "https"  # Gatekeeper refuses plain HTTP providers
    assert url.path == "/admission/gatekeeper"
    assert provider["spec"]["caBundle"]

    template = load("gatekeeper/constraint-template.yaml")
    assert template["kind"] == "ConstraintTemplate"
    (target,) = template["spec"]["targets"]
    assert target["target"] == "admission.k8s.gatekeeper.sh"
    name = provider["metadata"]["name"]
    assert f'"provider": "{name}"' in target["rego"]

    constraint = load("gatekeeper/constraint.yaml")
    assert constraint["kind"] == template["spec"]["crd"]["spec"]["names"]["kind"]
    assert constraint["apiVersion"] == "constraints.gatekeeper.sh/v1beta1"
    matched = {
        (group, kind)
        for entry in constraint["spec"]["match"]["kinds"]
        for group in entry["apiGroups"]
        for kind in entry["kinds"]
    }
    assert matched == {(group, kind) for kind, (group, *_) in KINDS.items()}


def test_gatekeeper_pin_provider_and_assign_mutators() -> None:
    provider = load("gatekeeper/provider-pin.yaml")
    assert provider["kind"] == "Provider"
    url = urllib.parse.urlsplit(provider["spec"]["url"])
    assert url.scheme == "https" and url.path == "/admission/gatekeeper/mutate"
    assert provider["spec"]["caBundle"]
    constraint = load("gatekeeper/constraint.yaml")
    assigns = load_all("gatekeeper/assign-pin.yaml")
    locations = set()
    for assign in assigns:
        assert assign["apiVersion"] == "mutations.gatekeeper.sh/v1"
        assert assign["kind"] == "Assign"
        assert assign["spec"]["applyTo"] == [{"groups": [""], "kinds": ["Pod"], "versions": ["v1"]}]
        match = assign["spec"]["match"]
        assert match["excludedNamespaces"] == constraint["spec"]["match"]["excludedNamespaces"]
        params = assign["spec"]["parameters"]
        external = params["assign"]["externalData"]
        assert external == {
            "provider": provider["metadata"]["name"],
            "dataSource": "ValueAtLocation",
            "failurePolicy": "Fail",
        }
        location = assign["spec"]["location"]
        (test,) = params["pathTests"]
        assert location == f"{test['subPath']}[name:*].image"
        assert test["condition"] == "MustExist"
        locations.add(location)
    assert len({a["metadata"]["name"] for a in assigns}) == len(assigns)
    assert locations == {f"spec.{name}[name:*].image" for name in CONTAINER_LISTS}


def assign_location(obj: dict[str, Any], location: str, values: dict[str, str] | None) -> list[str]:
    """Gatekeeper's reading of `spec.<list>[name:*].image` (the only shape
    assign-pin.yaml uses): the values at the location, replaced from
    `values` when given."""
    head, _, field = location.partition("[name:*].")
    found = []
    containers = obj
    for key in head.split("."):
        containers = containers.get(key) if isinstance(containers, dict) else None
    for container in containers or []:
        found.append(container[field])
        if values is not None:
            container[field] = values[container[field]]
    return found


@pytest.mark.gen_test
async def test_gatekeeper_assign_pins_as_the_webhook_does(api) -> None:
    """Gatekeeper's path (keys from each Assign location, values assigned
    back) and the MutatingWebhook's JSONPatch give the same Pod."""
    digest = "sha256:" + "9" * 64
    reply = await api.put({"id": f"quay.io/t/app@{digest}", "name": "quay.io/t/app", "tags": ["1"]})
    assert reply.status == 200
    images = ["quay.io/t/app:1", "quay.io/t/app:2", "nginx"]
    review = admission_review("Pod", pod_spec(images, init=images[:1], ephemeral=images[1:]))
    pod = review["request"]["object"]

    reply = await api.request("POST", "/admission/mutate", review)
    patch = json.loads(base64.b64decode(reply.json["response"]["patch"]))
    by_webhook = jsonpatch.apply_patch(pod, patch)

    by_gatekeeper = copy.deepcopy(pod)
    url = urllib.parse.urlsplit(load("gatekeeper/provider-pin.yaml")["spec"]["url"])
    for assign in load_all("gatekeeper/assign-pin.yaml"):
        location = assign["spec"]["location"]
        keys = assign_location(by_gatekeeper, location, None)
        reply = await api.request("POST", url.path, provider_request(*keys))
        items = reply.json["response"]["items"]
        assign_location(by_gatekeeper, location, {i["key"]: i["value"] for i in items})
    assert by_gatekeeper == by_webhook != pod
    assert by_gatekeeper["spec"]["initContainers"][0]["image"] == f"quay.io/t/app:1@{digest}"


def evaluate_rego(inputs: list[dict[str, Any]]) -> list[list[str]]:
    rego = load("gatekeeper/constraint-template.yaml")["spec"]["targets"][0]["rego"]
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("rego_eval.py"))],
        input=json.dumps({"rego": rego, "inputs": inputs}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_gatekeeper_rego_reports_each_refused_image_of_every_kind() -> None:
    inputs, expected = [], []
    for kind in KINDS:
        review = admission_review(kind, pod_spec(["ok:1", "bad:c"], init=["bad:i"], ephemeral=[]))
        inputs.append({"review": review["request"]})
        expected.append(["imagelist: bad:c is not allowed", "imagelist: bad:i is not allowed"])
    pod = admission_review("Pod", pod_spec(["ok:1"], ephemeral=["bad:debug"]))
    inputs.append({"review": pod["request"]})
    expected.append(["imagelist: bad:debug is not allowed"])
    # Only listed images, or no pod spec at all: no violation.
    inputs.append({"review": admission_review("Deployment", pod_spec(["ok:1"]))["request"]})
    expected.append([])
    inputs.append({"review": admission_review("ConfigMap", obj={"data": {}})["request"]})
    expected.append([])
    # imagelist unreachable or answering 503: Gatekeeper reports a system error.
    down = admission_review("Pod", pod_spec(["ok:1"]))["request"]
    inputs.append({"review": down, "stub_system_error": "503 Service Unavailable"})
    expected.append(["imagelist could not be asked: 503 Service Unavailable"])
    assert evaluate_rego(inputs) == expected


@pytest.mark.gen_test
async def test_the_example_paths_answer_their_protocols(api) -> None:
    webhook = load("validating-webhook.yaml")
    path = webhook["webhooks"][0]["clientConfig"]["service"]["path"]
    reply = await api.request("POST", path, admission_review("Pod", pod_spec(["nginx"])))
    assert reply.status == 200 and reply.json["kind"] == "AdmissionReview"

    kubeconfig = load("imagepolicy/kubeconfig.yaml")
    path = urllib.parse.urlsplit(kubeconfig["clusters"][0]["cluster"]["server"]).path
    reply = await api.request("POST", path, image_review("nginx"))
    assert reply.status == 200 and reply.json["kind"] == "ImageReview"

    for name in ("gatekeeper/provider.yaml", "gatekeeper/provider-pin.yaml"):
        provider = load(name)
        path = urllib.parse.urlsplit(provider["spec"]["url"]).path
        reply = await api.request("POST", path, provider_request("nginx"))
        assert reply.status == 200 and reply.json["kind"] == "ProviderResponse"

    mutating = load("mutating-webhook.yaml")
    path = mutating["webhooks"][0]["clientConfig"]["service"]["path"]
    reply = await api.request("POST", path, admission_review("Pod", pod_spec(["nginx"])))
    assert reply.status == 200 and reply.json["response"]["allowed"] is True
