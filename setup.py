from setuptools import find_packages, setup

setup(
    name="imagelist",
    version="0.1.0",
    description="Container-image allowlist service with built-in Kubernetes admission",
    python_requires=">=3.11",
    py_modules=["imagelist"],
    packages=find_packages(
        include=["config", "config.*", "handlers", "handlers.*", "storage", "storage.*"]
    ),
    install_requires=[
        "tornado>=6.4,<7",
        "aiopg==1.4.0",
        "psycopg2-binary>=2.9,<3",
        "PyYAML>=6",
        "watchdog>=4",
        "prometheus-client>=0.20",
        "structlog>=24",
        # Faster than json for every response body, and strict: it rejects
        # invalid UTF-8 and lone surrogates that json.loads lets through.
        "orjson>=3.9",
        # The distribution reference grammar (docker/distribution port).
        "docker-image-py>=0.1.13",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "ruff",
            # The daemon's code is type-checked in .ci/run.
            "mypy>=1.10",
            "types-PyYAML",
            "types-psycopg2",
            "schemathesis>=4",
            # Validates openapi.yaml against the OpenAPI 3.1 schema: the
            # fuzzer reads a malformed document without complaint.
            "openapi-spec-validator>=0.7",
            # Rego engine (rego-cpp) to evaluate the example Gatekeeper
            # ConstraintTemplate in tests; OPA itself is not packaged here.
            "regopy>=1.5",
            # Property tests: random write sequences through two instances and
            # SQL must leave every admission replica equal to the table.
            "hypothesis>=6",
            # RFC 6902 JSON Patch, to apply the patches /admission/mutate
            # answers as the API server would, instead of trusting our own
            # reading of them.
            "jsonpatch>=1.33",
        ],
    },
    # Served at /openapi.yaml by an installed daemon (handlers/docs.py).
    data_files=[("share/imagelist", ["openapi.yaml"])],
    entry_points={"console_scripts": ["imagelist=imagelist:main_entry"]},
)
