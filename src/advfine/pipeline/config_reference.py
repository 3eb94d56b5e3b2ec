"""The configuration reference (docs/configuration.md), rendered from the config schema's descriptions and
defaults, so the reference cannot drift from what validation accepts.

    .venv/bin/python -m advfine.pipeline.config_reference > docs/configuration.md

tests/test_config.py checks that the committed page equals this rendering.
"""
from __future__ import annotations

import json

from advfine.pipeline.config import load_schema

HEADER = """# Configuration reference

Every key of an experiment config (`config.yaml`, `configs/*.yaml`), generated from the schema
(`.venv/bin/python -m advfine.pipeline.config_reference > docs/configuration.md`; a test checks it is current).
A key with a default may be left out: validation fills it in, and `results/<experiment>/config.resolved.yaml`
shows what a run used. Required keys are marked **required**. An overlay names its base with a top-level
`extends: <config file>` and lists only what it changes ([pipeline.md](pipeline.md#configuration)).
"""


def _resolve(node: dict, defs: dict) -> dict:
    """``node`` with its ``$ref`` (into ``$defs``) merged under its own keys."""
    if "$ref" not in node:
        return node
    target = _resolve(defs[node["$ref"].split("/")[-1]], defs)
    own = {k: v for k, v in node.items() if k != "$ref"}
    merged = target | own
    if "properties" in target and "properties" in own:  # a property refined here keeps the rest of its definition
        merged["properties"] = {key: _resolve(target["properties"].get(key, {}), defs) | own["properties"].get(key, {})
                                for key in {**target["properties"], **own["properties"]}}
    if "required" in target and "required" in own:
        merged["required"] = [*target["required"], *own["required"]]
    return merged


def _kind(node: dict, defs: dict) -> str:
    """The accepted values, briefly: an enum's values, the type(s), an array's item kind, the bounds."""
    node = _resolve(node, defs)
    if "enum" in node:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    types = node.get("type", "any")
    types = types if isinstance(types, list) else [types]
    text = " or ".join(types)
    if types[0] == "array" and "items" in node:
        text = f"list of {_kind(node['items'], defs)}"
    if types[0] == "object" and isinstance(node.get("additionalProperties"), dict):
        names = node.get("propertyNames", {}).get("enum")
        text = "mapping" + (f" of {', '.join(f'`{n}`' for n in names)}" if names else "") + " to a section like the above"
    bounds = [f"{sign} {node[key]}" for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"),
                                                      ("maximum", "≤"), ("exclusiveMaximum", "<")) if key in node]
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def _rows(node: dict, defs: dict, prefix: str, required: bool) -> list[str]:
    node = _resolve(node, defs)
    rows = []
    properties = node.get("properties")
    leaf = not properties or node.get("additionalProperties") not in (None, False)
    if prefix and (leaf or "description" in node):
        default = f"`{json.dumps(node['default'])}`" if "default" in node else ("**required**" if required else "")
        description = " ".join(str(node.get("description", "")).split())
        rows.append(f"| `{prefix}` | {_kind(node, defs) if leaf else 'section'} | {default} | {description} |")
    if properties:
        needed = set(node.get("required", []))
        for key, child in properties.items():
            rows += _rows(child, defs, f"{prefix}.{key}" if prefix else key, key in needed)
    return rows


def render(schema: dict | None = None) -> str:
    """docs/configuration.md: one table per top-level section, in the schema's order."""
    schema = schema or load_schema()
    defs = schema.get("$defs", {})
    needed = set(schema["required"])
    parts = [HEADER]
    scalars = [key for key, node in schema["properties"].items() if "properties" not in _resolve(node, defs)]
    parts.append("\n## Top-level keys\n")
    parts.append("| key | accepts | default | meaning |\n|---|---|---|---|")
    parts.append("\n".join(row for key in scalars for row in _rows(schema["properties"][key], defs, key, key in needed)))
    for key, node in schema["properties"].items():
        if key in scalars:
            continue
        parts.append(f"\n## `{key}`\n")
        resolved = _resolve(node, defs)
        if resolved.get("description") and resolved.get("properties"):
            parts.append(" ".join(resolved["description"].split()) + "\n")
        parts.append("| key | accepts | default | meaning |\n|---|---|---|---|")
        rows = _rows(node, defs, key, key in needed)
        if resolved.get("properties") and rows and rows[0].startswith(f"| `{key}` |"):
            rows = rows[1:]  # the section's own description is its paragraph
        parts.append("\n".join(rows))
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    print(render(), end="")
