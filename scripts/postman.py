"""Write docs/postman_collection.json (Postman Collection v2.1) from docs/openapi.yaml.

One folder per tag, one request per HTTP operation, with the spec's examples as path
variables, query parameters, headers and JSON bodies. `{{baseUrl}}` (the spec's first
server) and `{{token}}` (a token of `[api] tokens`) are collection variables to set on import.
The device WebSocket operations are left out: a 101 upgrade is not an HTTP request Postman can
replay. Run after editing the spec; `--check` exits 1 when the committed file is out of date
(tests/test_postman.py runs it).

    python scripts/postman.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEC_PATH = ROOT / "docs" / "openapi.yaml"
OUT_PATH = ROOT / "docs" / "postman_collection.json"
SCHEMA_URL = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
Json = dict[str, Any]


def deref(spec: Json, thing: Json) -> Json:
    """`thing`, or what its local `$ref` ("#/components/…") points at."""
    while isinstance(thing.get("$ref"), str):
        target: Any = spec
        for key in thing["$ref"].removeprefix("#/").split("/"):
            target = target[key.replace("~1", "/").replace("~0", "~")]
        thing = target
    return thing


def example_of(spec: Json, thing: Json) -> Any:
    """The example a parameter or media type gives (`example`, the first of `examples`, or
    the schema's example, const or default); None when it gives none."""
    if "example" in thing:
        return thing["example"]
    examples = thing.get("examples")
    if isinstance(examples, dict) and examples:
        return deref(spec, next(iter(examples.values()))).get("value")
    schema = deref(spec, thing.get("schema", {}))
    for key in ("example", "const", "default"):
        if key in schema:
            return schema[key]
    listed = schema.get("examples")
    return listed[0] if isinstance(listed, list) and listed else None


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def url_of(spec: Json, path: str, params: list[Json]) -> Json:
    """Postman's URL object: `{x}` becomes `:x`, query parameters carry their example."""
    segments = [
        ":" + s[1:-1] if s.startswith("{") and s.endswith("}") else s
        for s in path.strip("/").split("/")
    ]
    url: Json = {"raw": "", "host": ["{{baseUrl}}"], "path": segments}
    query = [
        {"key": p["name"], "value": as_text(example_of(spec, p)), "disabled": not p.get("required")}
        for p in params
        if p["in"] == "query"
    ]
    if query:
        url["query"] = query
    variables = [
        {
            "key": p["name"],
            "value": as_text(example_of(spec, p)),
            "description": p.get("description", ""),
        }
        for p in params
        if p["in"] == "path"
    ]
    if variables:
        url["variable"] = variables
    raw = "{{baseUrl}}/" + "/".join(segments) + ("/" if path.endswith("/") and segments else "")
    enabled = [f"{q['key']}={q['value']}" for q in query if not q["disabled"]]
    url["raw"] = raw + ("?" + "&".join(enabled) if enabled else "")
    return url


def body_of(spec: Json, operation: Json) -> tuple[str, Json] | None:
    """The body's media type and Postman body: raw JSON from the request body's example, or
    a file to pick for a binary body (a recording); None when the operation takes none."""
    content = deref(spec, operation.get("requestBody", {})).get("content", {})
    if "application/json" not in content:
        if not content:
            return None
        return next(iter(content)), {"mode": "file", "file": {"src": ""}}
    example = example_of(spec, content["application/json"])
    raw = json.dumps(example, ensure_ascii=False, indent=2) if example is not None else "{}"
    return "application/json", {"mode": "raw", "raw": raw, "options": {"raw": {"language": "json"}}}


def request_of(spec: Json, path: str, method: str, operation: Json, shared: list[Json]) -> Json:
    """One collection item for `method path` (`shared`: the path's own parameters)."""
    listed = [deref(spec, p) for p in [*shared, *operation.get("parameters", [])]]
    params = {(p["in"], p["name"]): p for p in listed}
    headers = [
        {"key": p["name"], "value": as_text(example_of(spec, p)), "disabled": not p.get("required")}
        for p in params.values()
        if p["in"] == "header"
    ]
    request: Json = {
        "method": method.upper(),
        "header": headers,
        "url": url_of(spec, path, list(params.values())),
        "description": operation.get("description", "").strip(),
    }
    body = body_of(spec, operation)
    if body is not None:
        request["header"].append({"key": "Content-Type", "value": body[0]})
        request["body"] = body[1]
    if operation.get("security") == []:
        request["auth"] = {"type": "noauth"}
    name = operation.get("summary") or f"{method.upper()} {path}"
    return {"name": name, "request": request}


def is_websocket(operation: Json) -> bool:
    return "101" in operation.get("responses", {})


def collection(spec: Json) -> Json:
    """The Postman collection for `spec`, folders in the spec's tag order."""
    folders: dict[str, list[Json]] = {t["name"]: [] for t in spec.get("tags", [])}
    for path, item in spec["paths"].items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None or is_websocket(operation):
                continue
            tag = (operation.get("tags") or ["other"])[0]
            entry = request_of(spec, path, method, operation, item.get("parameters", []))
            folders.setdefault(tag, []).append(entry)
    descriptions = {t["name"]: t.get("description", "") for t in spec.get("tags", [])}
    info = spec["info"]
    return {
        "info": {
            "name": info["title"],
            "description": f"{info.get('summary', '')}\n\nGenerated from docs/openapi.yaml "
            f"(version {info['version']}) by scripts/postman.py; do not edit.",
            "schema": SCHEMA_URL,
        },
        "item": [
            {"name": name, "description": descriptions.get(name, ""), "item": items}
            for name, items in folders.items()
            if items
        ],
        "auth": {"type": "bearer", "bearer": [{"key": "token", "value": "{{token}}"}]},
        "variable": [
            {"key": "baseUrl", "value": spec["servers"][0]["url"]},
            {"key": "token", "value": ""},
        ],
    }


def render(spec: Json) -> str:
    return json.dumps(collection(spec), ensure_ascii=False, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail when the file is stale")
    args = parser.parse_args(argv)
    text = render(yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8")))
    if args.check:
        current = OUT_PATH.read_text(encoding="utf-8") if OUT_PATH.exists() else ""
        if current != text:
            print(f"{OUT_PATH.relative_to(ROOT)} is out of date: run scripts/postman.py")
            return 1
        return 0
    OUT_PATH.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
