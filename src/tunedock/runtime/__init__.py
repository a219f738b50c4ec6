"""The model server: a separate process that loads one model and serves it on loopback.

The control plane starts one model server per replica with ``python -m tunedock.runtime``
and forwards OpenAI-shaped requests to it unchanged. This package depends on no other
Tunedock package except ``tunedock.errors``.

Modules:
    cli                 command line, logging and start-up order
    server              listening socket, port file and uvicorn
    app                 HTTP routes, server-sent events, cancellation and error responses
    openai_requests     request validation into engine inputs
    openai_responses    response bodies and stream chunks in the OpenAI shapes
    generation_defaults server-side defaults for unset generation parameters
    engines             the Engine interface, batching, and the transformers and
                        ctranslate2 engines

The ctranslate2 engine's process imports neither torch nor transformers: only the
transformers engine's modules import them, and only when that engine is chosen.
"""
