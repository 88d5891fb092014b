"""examples/kubernetes: the manifests parse, carry the settings the README
promises, and point at routes the app really serves (checked through the
real HTTP app); the Gatekeeper Rego is evaluated with a Rego engine."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s import KINDS, admission_review, image_review, pod_spec, provider_request

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "kubernetes"


def load(name: str) -> dict[str, Any]:
    docs = list(yaml.safe_load_all((EXAMPLES / name).read_text()))
    assert len(docs) == 1, name
    return docs[0]


@pytest.fixture(scope="module")
def webhook() -> dict[str, Any]:
    return load("validating-webhook.yaml")


def test_every_example_is_yaml() -> None:
    files = sorted(EXAMPLES.rglob("*.yaml"))
    assert len(files) == 6
    for path in files:
        doc = yaml.safe_load(path.read_text())
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

    provider = load("gatekeeper/provider.yaml")
    path = urllib.parse.urlsplit(provider["spec"]["url"]).path
    reply = await api.request("POST", path, provider_request("nginx"))
    assert reply.status == 200 and reply.json["kind"] == "ProviderResponse"
