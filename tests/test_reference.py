"""Table tests: image references parsed and rendered as distribution does.

Expected values follow github.com/distribution/reference (ParseDockerRef,
ParseNormalizedNamed, its 255-character path limit) and go-digest (sha256,
sha384, sha512; lowercase hex of the exact length), including where the
docker-image-py port alone answers differently (trailing newline).
"""

from __future__ import annotations

import pytest

from storage.reference import (
    InvalidReference,
    id_digest,
    normalize_name,
    parse_reference,
    reference_keys,
)

H256 = "0123456789abcdef" * 4
H384 = "0123456789abcdef" * 6
H512 = "0123456789abcdef" * 8

RESOLVED = [
    # familiar names -> docker.io, library/, default tag
    ("nginx", "docker.io/library/nginx:latest"),
    ("nginx:1.25", "docker.io/library/nginx:1.25"),
    ("myorg/app", "docker.io/myorg/app:latest"),
    ("myorg/app:v1", "docker.io/myorg/app:v1"),
    ("docker.io/nginx", "docker.io/library/nginx:latest"),
    ("docker.io/library/nginx:latest", "docker.io/library/nginx:latest"),
    ("index.docker.io/nginx", "docker.io/library/nginx:latest"),
    ("index.docker.io/library/nginx:1", "docker.io/library/nginx:1"),
    ("index.docker.io/myorg/app", "docker.io/myorg/app:latest"),
    ("docker.io/myorg/team/app:2", "docker.io/myorg/team/app:2"),
    # other registries keep their names; no library/ there
    ("quay.io/foo/nginx:v1", "quay.io/foo/nginx:v1"),
    ("quay.io/nginx", "quay.io/nginx:latest"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/app:dev", "localhost:5000/app:dev"),
    ("registry.example.com:5000/a/b/c:1.0", "registry.example.com:5000/a/b/c:1.0"),
    ("[::1]:5000/app", "[::1]:5000/app:latest"),
    ("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest"),
    # an uppercase first component is taken as a registry host, as in Go
    ("MyRegistry/app", "MyRegistry/app:latest"),
    # separators allowed inside path components
    ("my_org/app-name.x__y:tag_1.0-rc", "docker.io/my_org/app-name.x__y:tag_1.0-rc"),
    # a digest: the tag is dropped, the digest decides
    (f"nginx@sha256:{H256}", f"docker.io/library/nginx@sha256:{H256}"),
    (f"nginx:1.25@sha256:{H256}", f"docker.io/library/nginx@sha256:{H256}"),
    (f"quay.io/foo/app:v1@sha384:{H384}", f"quay.io/foo/app@sha384:{H384}"),
    (f"myorg/app@sha512:{H512}", f"docker.io/myorg/app@sha512:{H512}"),
    # "sha256:<hex>" alone is a name and a tag to the grammar, as in Go
    (f"sha256:{H256}", f"docker.io/library/sha256:{H256}"),
    # length limits: 255-char path and 128-char tag are fine
    ("x.io/" + "a" * 255, "x.io/" + "a" * 255 + ":latest"),
    ("library/" + "a" * 247, "docker.io/library/" + "a" * 247 + ":latest"),
    ("nginx:" + "t" * 128, "docker.io/library/nginx:" + "t" * 128),
]

INVALID = [
    ("", "empty"),
    ("Nginx", "lowercase"),
    ("myorg/App", "lowercase"),
    ("docker.io/MyOrg/app", "lowercase"),
    ("nginx:", "invalid reference format"),
    ("nginx:1.0:2", "invalid reference format"),
    ("nginx:-tag", "invalid reference format"),
    ("nginx:" + "t" * 129, "invalid reference format"),
    ("nginx@sha256:abc", "invalid reference format"),
    (f"nginx@sha256:{H256[:-1]}", "invalid checksum digest length"),
    (f"nginx@sha256:{H256[:31]}", "invalid reference format"),  # under 32 hex
    (f"nginx@sha256:{H256}0", "invalid checksum digest length"),
    (f"nginx@sha256:{H256.upper()}", "invalid"),
    (f"nginx@sha384:{H256}", "invalid checksum digest length"),
    (f"nginx@sha512:{H384}", "invalid checksum digest length"),
    (f"nginx@md5:{H256[:32]}", "unsupported digest algorithm"),
    (f"nginx@sha1:{H256[:40]}", "unsupported digest algorithm"),
    (f"@sha256:{H256}", "invalid reference format"),
    (H256, "64-byte hexadecimal"),
    ("a/" + "b" * 254, "255"),  # path docker.io/a/bbb... has 256 chars
    ("x.io/" + "a" * 256, "255"),
    ("foo//bar", "invalid reference format"),
    ("foo/", "invalid reference format"),
    ("/foo", "invalid reference format"),
    ("-foo", "invalid reference format"),
    ("foo bar", "whitespace"),
    ("nginx\n", "whitespace"),  # docker-image-py alone accepts this one
    ("nginx:1.0\n", "whitespace"),
    ("\tnginx", "whitespace"),
    ("nginx\x00", "control"),
    ("ngïnx", "non-ASCII"),
    ("example.com:/foo", "invalid reference format"),
    ("http://nginx", "invalid reference format"),
    ("!!!", "invalid reference format"),
    ("a" * 2000, "longer than"),
]


@pytest.mark.parametrize(("text", "resolved"), RESOLVED)
def test_resolved_reference(text: str, resolved: str) -> None:
    assert str(parse_reference(text)) == resolved


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_invalid_reference(text: str, message: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    assert message in str(info.value)


def test_parts_of_a_parsed_reference() -> None:
    ref = parse_reference(f"quay.io/foo/app:v1@sha512:{H512}")
    assert (ref.name, ref.tag, ref.digest) == ("quay.io/foo/app", None, f"sha512:{H512}")
    ref = parse_reference("nginx")
    assert (ref.name, ref.tag, ref.digest) == ("docker.io/library/nginx", "latest", None)


@pytest.mark.parametrize(
    ("name", "normalized"),
    [
        ("nginx", "docker.io/library/nginx"),
        ("library/nginx", "docker.io/library/nginx"),
        ("docker.io/nginx", "docker.io/library/nginx"),
        ("index.docker.io/library/nginx", "docker.io/library/nginx"),
        ("myorg/apache2", "docker.io/myorg/apache2"),
        ("docker.io/myorg/apache2", "docker.io/myorg/apache2"),
        ("quay.io/foo/nginx", "quay.io/foo/nginx"),
        ("localhost:5000/app", "localhost:5000/app"),
        # not repository names: a tag, a digest, bad syntax -> never match
        ("nginx:latest", None),
        (f"nginx@sha256:{H256}", None),
        ("My App", None),
        ("myorg/App", None),
        ("", None),
        (H256, None),
    ],
)
def test_normalize_stored_name(name: str, normalized: str | None) -> None:
    assert normalize_name(name) == normalized


@pytest.mark.parametrize(
    ("entry_id", "digest"),
    [
        (H256, f"sha256:{H256}"),
        (H384, f"sha384:{H384}"),
        (H512, f"sha512:{H512}"),
        (f"sha256:{H256}", f"sha256:{H256}"),
        (f"sha384:{H384}", f"sha384:{H384}"),
        (f"sha512:{H512}", f"sha512:{H512}"),
        (f"quay.io/foo/nginx@sha256:{H256}", f"sha256:{H256}"),
        (f"myorg/app:v1@sha512:{H512}", f"sha512:{H512}"),
        (f"nginx@sha384:{H384}", f"sha384:{H384}"),
        # short or odd ids old clients use: stored, but no digest
        ("123abc", None),
        (H256[:-1], None),
        (H256.upper(), None),
        (f"sha256:{H256[:-2]}", None),
        (f"md5:{H256[:32]}", None),
        (f"Bad Name@sha256:{H256}", None),
        (f"nginx@{H256}", None),
        ("nginx:latest", None),
    ],
)
def test_id_digest(entry_id: str, digest: str | None) -> None:
    assert id_digest(entry_id) == digest


def test_reference_keys() -> None:
    assert reference_keys("myorg/app", f"sha256:{H256}") == (
        "docker.io/myorg/app",
        f"sha256:{H256}",
    )
    assert reference_keys("nginx:1", "abc") == (None, None)
