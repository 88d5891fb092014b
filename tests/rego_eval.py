"""Evaluate the example ConstraintTemplate's Rego (run as a subprocess by
test_k8s_examples.py, so a crash of the native Rego engine fails one test
instead of the whole run).

stdin: {"rego": "...", "inputs": [<input>, ...]}; stdout: one result per input,
the set `data.imagelistallowed.violation` as a list of messages.

Gatekeeper's `external_data` builtin is stood in for by a Rego function
with the same contract: keys starting with "bad" come back in `errors`, and
an input field `stub_system_error` becomes `system_error`.
"""

from __future__ import annotations

import json
import sys

from regopy import Interpreter

STUB = """
package imagelistallowed

import future.keywords.in

external_data(request) := {
  "responses": [[key, key] | some key in request.keys; not startswith(key, "bad")],
  "errors": [[key, concat("", [key, " is not allowed"])] |
    some key in request.keys
    startswith(key, "bad")
  ],
  "system_error": object.get(input, "stub_system_error", ""),
}
"""


def main() -> None:
    job = json.load(sys.stdin)
    results = []
    for term in job["inputs"]:
        rego = Interpreter()
        rego.add_module("template.rego", job["rego"])
        rego.add_module("stub.rego", STUB)
        rego.set_input_term(json.dumps(term))
        output = rego.query("data.imagelistallowed.violation")
        if not output.results:
            raise SystemExit(f"Rego error: {output}")
        found = output.results[0].expressions[0] if output.results[0].expressions else []
        results.append(sorted(v["msg"] for v in found))
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
