"""Digest pinning: rewrite an image allowed by tag to the digest CI recorded.

- POST /admission/mutate              MutatingAdmissionWebhook, AdmissionReview v1
- POST /admission/gatekeeper/mutate   Gatekeeper external data for an Assign mutator

A tag is a moving pointer: whoever can push to the registry can re-point it
after CI recorded it. When the entry that allows `app:1.4` has a repo digest
as its id (storage.pinning), the reference becomes `app:1.4@sha256:<hex>`,
so the cluster pulls exactly that content. Nothing here allows or denies:
references with a digest already, references not allowed and invalid ones
are left as they are for /admission/validate (or the Gatekeeper constraint),
which runs after mutation and checks the digest. Warn mode changes nothing
here either: pinning never admits an image that was not admitted before.

Pinning is idempotent (a pinned reference has a digest, so it is never
pinned again), which the API server's reinvocation and Gatekeeper require.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
import structlog

from handlers.admission import (
    AdmissionHandler,
    AdmissionRequest,
    admission_request,
    admission_review,
    provider_request,
    provider_response,
)
from handlers.base import BodyHandler
from handlers.policy import Decision, TooManyReferences, decide, quote
from handlers.workloads import Container, controller_owned

log = structlog.get_logger("imagelist.admission")


def pinnable(review: AdmissionRequest) -> list[Container]:
    """The containers of a review whose references pinning may rewrite.

    - Only CREATE and UPDATE run a new object.
    - A workload made by a controller (a Deployment's ReplicaSet, a
      CronJob's Job) is left alone: its template is its owner's, pinned when
      the owner was written. Rewriting it would make a Deployment find no
      ReplicaSet matching its template and create new ones without end.
      Pods are pinned whoever made them: no controller compares them.
    - On UPDATE, an image that did not change is left alone. Rewriting it
      would restart a running Pod's container, or roll out a Deployment, on
      an unrelated edit such as a label.
    """
    if review.operation not in ("CREATE", "UPDATE"):
        return []
    if (review.group, review.kind) != ("", "Pod") and controller_owned(review.object):
        return []
    containers = review.containers()
    if review.operation == "UPDATE" and review.old_object is not None:
        before = {c.pointer: c.reference for c in review.containers(old=True)}
        containers = [c for c in containers if before.get(c.pointer) != c.reference]
    return containers


def json_patch(pins: list[tuple[Container, Decision]]) -> str:
    """RFC 6902 JSON Patch replacing each image field, base64 as
    AdmissionReview wants it."""
    ops = [{"op": "replace", "path": c.pointer, "value": d.pinned} for c, d in pins]
    return base64.b64encode(orjson.dumps(ops)).decode("ascii")


# Pins named in one log line: each is a few hundred bytes at most (quote()
# bounds the image), so the line stays well inside what journald keeps
# whole (48 KiB) however many containers an object has.
MAX_LOGGED_PINS = 100


def _log_pins(handler: AdmissionHandler, records: list[dict[str, Any]], **fields: Any) -> None:
    log.info(
        "admission_pinned",
        endpoint=handler.endpoint,
        request_id=handler.request_id,
        pins=records[:MAX_LOGGED_PINS],
        pins_total=len(records),
        **fields,
    )


def _pin_record(decision: Decision, **where: str) -> dict[str, Any]:
    return {**where, "image": quote(decision.written), "digest": decision.pin}


class MutateHandler(AdmissionHandler, BodyHandler):
    """MutatingAdmissionWebhook backend (admissionReviewVersions: ["v1"])."""

    route = "/admission/mutate"
    endpoint = "mutate"

    async def post(self) -> None:
        review = admission_request(self.json_body())
        containers = pinnable(review)
        try:
            decisions = await decide(self.ctx.decisions, [c.reference for c in containers])
        except TooManyReferences as exc:
            # Nothing is pinned, nothing admitted: /admission/validate
            # refuses the same review for the same reason.
            self.count("allowed")
            self.log_denials("warned", [exc.message])
            warning = {"uid": review.uid, "allowed": True, "warnings": [exc.message]}
            self.write_json(admission_review(warning))
            return
        pins = [(c, decisions[c.reference]) for c in containers]
        pins = [(c, d) for c, d in pins if d.pin is not None]
        # A mutating webhook never denies: /admission/validate decides.
        self.count("allowed")
        response: dict[str, Any] = {"uid": review.uid, "allowed": True}
        if pins:
            response["patchType"] = "JSONPatch"
            response["patch"] = json_patch(pins)
            self.ctx.metrics.admission_pins.labels(self.endpoint).inc(len(pins))
            records = [_pin_record(d, location=c.location) for c, d in pins]
            _log_pins(self, records, **review.log_fields())
        self.write_json(admission_review(response))


class GatekeeperMutateHandler(AdmissionHandler, BodyHandler):
    """External data for a Gatekeeper `Assign` mutator on image fields
    (examples/kubernetes/gatekeeper/assign-pin.yaml): each key is the value
    at the location, each item's value the pinned reference or the key
    unchanged. No item carries an error: denying is the constraint's job."""

    route = "/admission/gatekeeper/mutate"
    endpoint = "gatekeeper_mutate"

    async def post(self) -> None:
        api_version, keys = provider_request(self.json_body())
        decisions = await self.provider_decisions(api_version, keys, idempotent=True)
        if decisions is None:
            return
        self.count("allowed")
        items = [{"key": key, "value": decisions[key].pinned or key} for key in keys]
        pinned = [d for d in decisions.values() if d.pin is not None]
        if pinned:
            count = sum(1 for key in keys if decisions[key].pin is not None)
            self.ctx.metrics.admission_pins.labels(self.endpoint).inc(count)
            _log_pins(self, [_pin_record(d) for d in pinned])
        # Gatekeeper mutates only with an idempotent provider: a pinned
        # reference answers itself.
        self.write_json(provider_response(api_version, items, idempotent=True))
