"""A review names at most 1,000 image references, on every admission
endpoint: past that it is denied with a reason, unlooked-up, and no log
line grows past what journald keeps whole."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from k8s import admission_review, image_review, pod_spec, provider_request

from daemon import Daemon

MANY = [f"nginx:{i}" for i in range(20_000)]
JOURNALD_LINE_MAX = 48 * 1024


@pytest.fixture(scope="module", params=["enforce", "warn"])
def daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    path = tmp_path_factory.mktemp("cap")
    with Daemon("--database-url", f"sqlite:///{path}/db", "--admission-mode", request.param) as d:
        yield d, request.param


def post(d: Daemon, path: str, body: dict) -> tuple[int, dict, int]:
    import json

    raw = json.dumps(body).encode()
    status, reply, headers = d.request("POST", path, raw=raw)
    return status, reply, int(headers["Content-Length"])


def test_an_admission_review_over_the_cap_is_refused_with_its_reason(daemon) -> None:
    d, mode = daemon
    review = admission_review("Pod", pod_spec(MANY), uid="u-1")
    status, reply, size = post(d, "/admission/validate", review)
    assert status == 200
    response = reply["response"]
    assert response["uid"] == "u-1"
    assert size < 2000  # not an answer listing 20,000 images
    if mode == "enforce":
        assert response["allowed"] is False
        assert "20000 image references; at most 1000" in response["status"]["message"]
    else:
        assert response["allowed"] is True
        assert "at most 1000" in response["warnings"][0]


def test_an_image_review_over_the_cap_is_refused_with_its_reason(daemon) -> None:
    d, mode = daemon
    status, reply, size = post(d, "/admission/imagepolicy", image_review(*MANY))
    assert status == 200 and size < 2000
    assert reply["status"]["allowed"] is (mode == "warn")
    assert "20000 image references; at most 1000" in reply["status"]["reason"]


def test_a_provider_request_over_the_cap_is_a_system_error(daemon) -> None:
    d, _ = daemon
    status, reply, size = post(d, "/admission/gatekeeper", provider_request(*MANY))
    assert status == 200 and size < 2000
    assert reply["response"]["items"] == []
    assert "at most 1000" in reply["response"]["systemError"]


def test_one_thousand_references_are_still_reviewed(daemon) -> None:
    d, _ = daemon
    status, reply, _ = post(d, "/admission/gatekeeper", provider_request(*MANY[:1000]))
    assert status == 200 and len(reply["response"]["items"]) == 1000


def test_log_lines_stay_whole_and_bounded(daemon) -> None:
    d, _ = daemon
    huge = "x" * 100_000
    review = admission_review("Pod", pod_spec([f"nope{'y' * 900}:{i}" for i in range(500)]))
    review["request"].update(uid=huge, namespace=huge, name=huge)
    status, _, _ = post(d, "/admission/validate", review)
    assert status == 200
    denials = [
        e
        for e in d.logs()
        if e["event"] in ("admission_denied", "admission_warned") and e["endpoint"] == "validate"
    ]
    assert denials
    for entry in denials:
        assert len(entry["uid"]) <= 300 and len(entry["namespace"]) <= 300
    for line in d.output:  # every line parsed as JSON by d.logs() above
        assert len(line.encode()) < JOURNALD_LINE_MAX


def test_any_log_line_is_cut_below_journalds_line_max() -> None:
    import json

    from config.logging import MAX_LINE, bounded_line

    line = json.dumps({"event": "x", "level": "info", "big": "y" * 100_000, "many": ["z"] * 5000})
    cut = bounded_line(line)
    assert len(cut) <= MAX_LINE
    fields = json.loads(cut)
    assert fields["event"] == "x" and fields["truncated_from"] == len(line)
    assert fields["big"].startswith("yyy") and "more characters" in fields["big"]
    wide = json.dumps({"event": "w", **{f"k{i}": "v" * 1000 for i in range(100)}})
    assert json.loads(bounded_line(wide)) == {"event": "w", "truncated_from": len(wide)}
    assert bounded_line('{"event": "small"}') == '{"event": "small"}'


def test_a_mutation_review_over_the_cap_pins_nothing_and_says_why(daemon) -> None:
    d, _ = daemon
    review = admission_review("Pod", pod_spec(MANY), uid="u-2")
    status, reply, size = post(d, "/admission/mutate", review)
    assert status == 200 and size < 2000
    response = reply["response"]
    assert response["uid"] == "u-2" and response["allowed"] is True
    assert "patch" not in response
    assert "20000 image references; at most 1000" in response["warnings"][0]


def test_a_gatekeeper_mutation_over_the_cap_is_a_system_error(daemon) -> None:
    d, _ = daemon
    status, reply, size = post(d, "/admission/gatekeeper/mutate", provider_request(*MANY))
    assert status == 200 and size < 2000
    assert reply["response"]["items"] == []
    assert "at most 1000" in reply["response"]["systemError"]
