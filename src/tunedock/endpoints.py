"""A model's endpoint: its URL and the copyable cURL, Python and JavaScript calls.

The snippets read the key from the ``TUNEDOCK_API_KEY`` environment variable, so that
they run as pasted and never carry a secret, unless the caller asks for one of its own
keys to be written in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

KEY_VARIABLE = "TUNEDOCK_API_KEY"
DEFAULT_PROMPT = "Hello!"
DEFAULT_SENTENCE = "A man is eating food."


@dataclass(frozen=True)
class EndpointCall:
    """The inference route and JSON body that a model's snippets send."""

    route: str
    body: dict[str, object]


def example_call(slug: str, model_format: str, example: str | None = None) -> EndpointCall:
    if model_format == "embedding":
        return EndpointCall("embeddings", {"model": slug, "input": example or DEFAULT_SENTENCE})
    return EndpointCall("completions", {"model": slug, "prompt": example or DEFAULT_PROMPT, "max_tokens": 32})


def curl_snippet(base_url: str, call: EndpointCall, api_key: str | None = None) -> str:
    body = json.dumps(call.body, ensure_ascii=False).replace("'", "'\\''")
    key = api_key or f"${KEY_VARIABLE}"
    return (
        f"curl {base_url}/v1/{call.route} \\\n"
        f'  -H "Authorization: Bearer {key}" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f"  -d '{body}'"
    )


def python_snippet(base_url: str, call: EndpointCall, api_key: str | None = None) -> str:
    arguments = ", ".join(f"{name}={value!r}" for name, value in call.body.items())
    if call.route == "embeddings":
        request, result = f"client.embeddings.create({arguments})", "response.data[0].embedding[:8]"
    else:
        request, result = f"client.completions.create({arguments})", "response.choices[0].text"
    if api_key:
        return (
            "from openai import OpenAI\n\n"
            f'client = OpenAI(base_url="{base_url}/v1", api_key="{api_key}")\n'
            f"response = {request}\n"
            f"print({result})\n"
        )
    return (
        "import os\n\n"
        "from openai import OpenAI\n\n"
        f'client = OpenAI(base_url="{base_url}/v1", api_key=os.environ["{KEY_VARIABLE}"])\n'
        f"response = {request}\n"
        f"print({result})\n"
    )


def javascript_snippet(base_url: str, call: EndpointCall, api_key: str | None = None) -> str:
    body = json.dumps(call.body, ensure_ascii=False)
    key = api_key or f"${{process.env.{KEY_VARIABLE}}}"
    result = "data.data[0].embedding.slice(0, 8)" if call.route == "embeddings" else "data.choices[0].text"
    # A named async function rather than top-level await, so that it also runs as CommonJS.
    return (
        "async function main() {\n"
        f'  const response = await fetch("{base_url}/v1/{call.route}", {{\n'
        '    method: "POST",\n'
        "    headers: {\n"
        f"      Authorization: `Bearer {key}`,\n"
        '      "Content-Type": "application/json",\n'
        "    },\n"
        f"    body: JSON.stringify({body}),\n"
        "  });\n"
        "  const data = await response.json();\n"
        f"  console.log(response.ok ? {result} : data.error);\n"
        "}\n\n"
        "main();\n"
    )


def snippets(base_url: str, slug: str, model_format: str, example: str | None = None,
             api_key: str | None = None) -> dict[str, str]:
    """Return the three snippets; ``api_key`` is written into them when given."""
    call = example_call(slug, model_format, example)
    return {
        "curl": curl_snippet(base_url, call, api_key),
        "python": python_snippet(base_url, call, api_key),
        "javascript": javascript_snippet(base_url, call, api_key),
    }
