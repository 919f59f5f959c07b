"""Schemathesis hooks for tests/test_fuzz.py (it points SCHEMATHESIS_HOOKS here): every operation's examples gain
cases whose ids are Unicode digits or longer than any id. The generators keep to each parameter's pattern and never
send them, yet str.isdigit() takes "²" and int() then refuses it: that was a 500 on four collector routes. Each such
case must get a documented 4xx in the one error shape; the added cases carry no generation metadata, so the checks
that judge data as valid or invalid leave them alone and the rest (no 5xx, documented status, schema) apply."""

from __future__ import annotations

from typing import Any

import schemathesis

# A superscript two, an Arabic-Indic three, a fullwidth one; 40 digits (past int64); 19 nines (just past int64).
ODD_IDS = ("\u00b2", "4403050\u0663", "\uff11", "9" * 40, "9" * 19)


def _is_id(parameter: Any) -> bool:
    """A path or query parameter that holds a number: an integer, or a string held to digits by its pattern."""
    schema = parameter.definition.get("schema", {})
    return schema.get("type") == "integer" or "[0-9]" in str(schema.get("pattern", ""))


def _value(parameter: Any) -> Any:
    definition = parameter.definition
    examples = definition.get("examples") or {}
    for candidate in (definition.get("example"), definition.get("schema", {}).get("example"),
                      *(e.get("value") for e in examples.values())):
        if candidate is not None:
            return candidate
    return "1"


@schemathesis.hook
def before_add_examples(context: Any, examples: list[Any]) -> None:
    operation = context.operation
    path = {p.name: _value(p) for p in operation.path_parameters}
    query = {p.name: _value(p) for p in operation.query if p.definition.get("required")}
    for location, parameters in (("path", operation.path_parameters), ("query", operation.query)):
        for parameter in parameters:
            if not _is_id(parameter):
                continue
            for odd in ODD_IDS:
                changed = {**(path if location == "path" else query), parameter.name: odd}
                examples.append(operation.Case(path_parameters=changed if location == "path" else path,
                                               query=changed if location == "query" else query))
