"""Kubernetes admission, built in.

- GET  /allowed?image=REF        one reference, for scripts
- POST /admission/validate       ValidatingAdmissionWebhook, AdmissionReview v1
- POST /admission/imagepolicy    ImagePolicyWebhook backend, ImageReview v1alpha1
- POST /admission/gatekeeper     OPA Gatekeeper external-data provider

Digest pinning (the mutating side) is in handlers/mutation.py.

These are called by the API server (or Gatekeeper), not by writers, so they
take no bearer token; protect them with TLS and the network instead.

Decisions come from the in-memory replica (storage/replica.py), which keeps
answering while the database is away, for up to --replica-max-age after it
was last known current. Past that, or before it was ever loaded, a database
that does not answer is a 503 JSON error, raised as StorageUnavailable and
mapped in handlers/errors.py like everywhere else, rather than an answer:
the cluster's own failure setting (failurePolicy, defaultAllow, the Rego's
system_error rule) then decides, instead of imagelist guessing.

In warn mode (--admission-mode warn) nothing is denied: would-be denials
come back as AdmissionReview warnings or in the ImageReview/Gatekeeper
reason, and are logged, so a policy can be rolled out by watching first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import structlog

from handlers.base import BaseHandler, BodyHandler
from handlers.errors import ApiError
from handlers.images import entry_json
from handlers.policy import Decision, TooManyReferences, decide, quote
from handlers.workloads import Container, MalformedObject, pod_containers

log = structlog.get_logger("imagelist.admission")

ADMISSION_API = "admission.k8s.io/v1"
IMAGEPOLICY_API = "imagepolicy.k8s.io/v1alpha1"
GATEKEEPER_APIS = ("externaldata.gatekeeper.sh/v1beta1", "externaldata.gatekeeper.sh/v1alpha1")
WARN_PREFIX = "warn mode, would deny: "
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "CONNECT")
# Longest request field (uid, namespace, name...) written to a log line.
MAX_LOGGED_FIELD = 256
# Denials listed in one log line; the rest are counted.
MAX_LOGGED_DENIALS = 20


class Judgement(NamedTuple):
    result: str  # allowed, denied or warned
    lines: list[str]  # one per reference not allowed
    summary: str


class AdmissionHandler(BaseHandler):
    """Counts each answer in imagelist_admission_decisions_total."""

    endpoint = ""
    _result: str | None = None

    @property
    def warn_mode(self) -> bool:
        return self.ctx.config.admission_mode == "warn"

    def settle(self, decisions: list[Decision]) -> str:
        """allowed, denied or warned, for the whole request."""
        if all(d.allowed for d in decisions):
            return "allowed"
        return "warned" if self.warn_mode else "denied"

    async def judge(
        self, references: list[str], denials: Callable[[dict[str, Decision]], list[str]]
    ) -> Judgement:
        """The review's result, its denial lines and a summary for a denial
        message. A review over the reference cap is refused whole (warned,
        in warn mode), with its reason as the one line."""
        try:
            decisions = await decide(self.ctx.decisions, references)
        except TooManyReferences as exc:
            result = "warned" if self.warn_mode else "denied"
            return Judgement(result, [exc.message], f"imagelist: {exc.message}")
        lines = denials(decisions)
        summary = f"imagelist: {len(lines)} image(s) not allowed: " + "; ".join(lines)
        return Judgement(self.settle(list(decisions.values())), lines, summary)

    async def provider_decisions(
        self, api_version: str, keys: list[str], *, idempotent: bool
    ) -> dict[str, Decision] | None:
        """`decide` for a Gatekeeper provider. Over the reference cap it
        answers the protocol's systemError itself and returns None."""
        try:
            return await decide(self.ctx.decisions, keys)
        except TooManyReferences as exc:
            self.count("denied")
            self.log_denials("denied", [exc.message])
            self.write_json(
                provider_response(api_version, [], idempotent=idempotent, system_error=exc.message)
            )
            return None

    def count(self, result: str) -> None:
        self._result = result
        self.ctx.metrics.admission_decisions.labels(self.endpoint, result).inc()

    def on_finish(self) -> None:
        # Every answer that is not a decision (400, 413, 503) is an error.
        if self._result is None and self.get_status() >= 400:
            self.count("error")
        super().on_finish()

    def log_denials(self, result: str, denied: list[str], **fields: Any) -> None:
        if result == "allowed":
            return
        event = "admission_warned" if result == "warned" else "admission_denied"
        # Every field comes from the review: bounded, so one line stays whole.
        bounded = {k: _bounded(v) for k, v in fields.items()}
        log.warning(
            event,
            endpoint=self.endpoint,
            request_id=self.request_id,
            denied=[_bounded(d) for d in denied[:MAX_LOGGED_DENIALS]],
            denied_count=len(denied),
            **bounded,
        )


def _bounded(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_LOGGED_FIELD:
        return value[:MAX_LOGGED_FIELD] + "..."
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return _bounded(str(value))


class AllowedHandler(AdmissionHandler):
    route = "/allowed"
    endpoint = "allowed"

    async def get(self) -> None:
        image = self.query("image")
        if not image:
            raise ApiError(400, "image parameter is required", {"parameter": "image"})
        decision = (await decide(self.ctx.decisions, [image]))[image]
        if decision.reference is None:
            raise ApiError(400, decision.reason, {"parameter": "image"})
        # A question, not an admission: warn mode does not change the answer.
        self.count("allowed" if decision.allowed else "denied")
        self.write_json(
            {
                "allowed": decision.allowed,
                "image": decision.resolved,
                "reason": decision.reason,
                "entry": None if decision.entry is None else entry_json(decision.entry),
                # What /admission/mutate would rewrite it to, so a pipeline
                # can deploy the pinned reference itself.
                "pin": decision.pinned,
            }
        )


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, f"{what} must be a JSON object")
    return body


def _typed_body(body: Any, api_versions: tuple[str, ...], kind: str) -> dict[str, Any]:
    """The request body, when it is a JSON object of this kind and apiVersion."""
    obj = _object(body, "the body")
    if obj.get("kind") != kind or obj.get("apiVersion") not in api_versions:
        raise ApiError(
            400,
            f"expected a {kind} of apiVersion {' or '.join(api_versions)}",
            {"apiVersion": str(obj.get("apiVersion")), "kind": str(obj.get("kind"))},
        )
    return obj


def _image_list(values: Any, field: str) -> list[str]:
    if not isinstance(values, list):
        raise ApiError(400, f"{field} must be a list of image references")
    if not all(isinstance(v, str) for v in values):
        raise ApiError(400, f"{field} must hold strings")
    return values


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """The parts of an AdmissionReview v1 request that admission reads."""

    uid: str
    group: str
    kind: str
    operation: str
    namespace: Any
    name: Any
    object: dict[str, Any] | None
    old_object: dict[str, Any] | None

    def containers(self, old: bool = False) -> list[Container]:
        """Every container the object (or the old object) would run."""
        field, obj = ("oldObject", self.old_object) if old else ("object", self.object)
        try:
            return pod_containers(self.group, self.kind, obj)
        except MalformedObject as exc:
            raise ApiError(400, f"malformed request.{field}: {exc}") from None

    def log_fields(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "operation": self.operation,
        }


def admission_request(body: Any) -> AdmissionRequest:
    """The request of an AdmissionReview v1, checked; ApiError 400 if not one."""
    review = _typed_body(body, (ADMISSION_API,), "AdmissionReview")
    request = _object(review.get("request"), "request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ApiError(400, "request.uid must be a non-empty string")
    kind = _object(request.get("kind"), "request.kind")
    group, kind_name = kind.get("group", ""), kind.get("kind")
    if not isinstance(group, str) or not isinstance(kind_name, str):
        raise ApiError(400, "request.kind must have string group and kind")
    operation = request.get("operation")
    if operation not in OPERATIONS:
        raise ApiError(400, f"request.operation must be one of {', '.join(OPERATIONS)}")
    objects = {}
    for field in ("object", "oldObject"):
        value = request.get(field)
        if value is not None and not isinstance(value, dict):
            raise ApiError(400, f"request.{field} must be an object or null")
        objects[field] = value
    return AdmissionRequest(
        uid=uid,
        group=group,
        kind=kind_name,
        operation=operation,
        namespace=request.get("namespace"),
        name=request.get("name"),
        object=objects["object"],
        old_object=objects["oldObject"],
    )


def admission_review(response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": ADMISSION_API, "kind": "AdmissionReview", "response": response}


class ValidateHandler(AdmissionHandler, BodyHandler):
    """ValidatingAdmissionWebhook backend (admissionReviewVersions: ["v1"])."""

    route = "/admission/validate"
    endpoint = "validate"

    async def post(self) -> None:
        review = admission_request(self.json_body())
        uid = review.uid
        # Deleting never starts a container; other verbs run the new object.
        containers = [] if review.operation == "DELETE" else review.containers()
        result, lines, summary = await self.judge(
            [c.reference for c in containers],
            lambda decisions: [
                _denial_line(c, decisions[c.reference])
                for c in containers
                if not decisions[c.reference].allowed
            ],
        )
        self.count(result)

        response: dict[str, Any] = {"uid": uid, "allowed": result != "denied"}
        if result == "denied":
            response["status"] = {
                "status": "Failure",
                "code": 403,
                "reason": "Forbidden",
                "message": summary,
            }
        elif result == "warned":
            response["warnings"] = [WARN_PREFIX + line for line in lines]
        self.log_denials(result, lines, **review.log_fields())
        self.write_json(admission_review(response))


def _denial_line(container: Container, decision: Decision) -> str:
    who = container.location
    if container.name:
        who = f"container {quote(container.name)} ({container.location})"
    return f"{who}: image {decision.describe()}"


class ImagePolicyHandler(AdmissionHandler, BodyHandler):
    """ImagePolicyWebhook admission plugin backend."""

    route = "/admission/imagepolicy"
    endpoint = "imagepolicy"

    async def post(self) -> None:
        review = _typed_body(self.json_body(), (IMAGEPOLICY_API,), "ImageReview")
        spec = _object(review.get("spec"), "spec")
        containers = spec.get("containers")
        containers = [] if containers is None else containers
        if not isinstance(containers, list) or not all(isinstance(c, dict) for c in containers):
            raise ApiError(400, "spec.containers must be a list of objects")
        images = _image_list([c.get("image") for c in containers], "spec.containers[].image")
        result, lines, summary = await self.judge(
            images,
            lambda found: [f"image {d.describe()}" for d in found.values() if not d.allowed],
        )
        self.count(result)
        if result == "allowed":
            reason = "every image is on the list"
        elif result == "warned":
            reason = WARN_PREFIX + "; ".join(lines)
        else:
            reason = summary
        self.log_denials(result, lines, namespace=spec.get("namespace"))
        self.write_json(
            {
                "apiVersion": IMAGEPOLICY_API,
                "kind": "ImageReview",
                "status": {"allowed": result != "denied", "reason": reason},
            }
        )


def provider_request(body: Any) -> tuple[str, list[str]]:
    """A Gatekeeper ProviderRequest's apiVersion and keys; ApiError 400 if
    not one."""
    body = _typed_body(body, GATEKEEPER_APIS, "ProviderRequest")
    request = _object(body.get("request"), "request")
    return body["apiVersion"], _image_list(request.get("keys", []), "request.keys")


def provider_response(
    api_version: str,
    items: list[dict[str, Any]],
    *,
    idempotent: bool,
    system_error: str | None = None,
) -> dict[str, Any]:
    response: dict[str, Any] = {"idempotent": idempotent, "items": items}
    if system_error is not None:
        # The provider protocol's way to say "no answer": Gatekeeper turns
        # it into a violation (the example Rego's system_error rule).
        response["systemError"] = system_error
    return {"apiVersion": api_version, "kind": "ProviderResponse", "response": response}


class GatekeeperHandler(AdmissionHandler, BodyHandler):
    """OPA Gatekeeper external-data provider: one item per key; `error` is
    set for each key that is not allowed, which the Rego turns into a
    violation (examples/kubernetes/gatekeeper/)."""

    route = "/admission/gatekeeper"
    endpoint = "gatekeeper"

    async def post(self) -> None:
        api_version, keys = provider_request(self.json_body())
        decisions = await self.provider_decisions(api_version, keys, idempotent=False)
        if decisions is None:
            return
        result = self.settle(list(decisions.values()))
        self.count(result)
        items = []
        for key in keys:
            decision = decisions[key]
            allowed = decision.allowed or result == "warned"
            reason = decision.reason
            if not decision.allowed and result == "warned":
                reason = WARN_PREFIX + reason
            item: dict[str, Any] = {
                "key": key,
                "value": {"allowed": allowed, "image": decision.resolved, "reason": reason},
            }
            if not allowed:
                item["error"] = f"image {decision.describe()}"
            items.append(item)
        denied = [f"image {d.describe()}" for d in decisions.values() if not d.allowed]
        self.log_denials(result, denied)
        # Not idempotent over time: a PUT or DELETE changes answers.
        self.write_json(provider_response(api_version, items, idempotent=False))
