"""Command line of the model server: ``python -m tunedock.runtime``.

The process loads one model, binds a free port on ``--host``, writes that port to
``--port-file`` and serves the OpenAI routes until SIGTERM. Exit status:

    0  serving ended without a signal
    2  invalid command line (argparse)
    3  the model could not be loaded; the last line of stderr is
       ``model load failed: <what and why>``
    4  the socket or the port file could not be set up; the last line of stderr
       starts with ``model server failed to start:``
  130  stopped by SIGINT (Ctrl+C), after a graceful shutdown

SIGTERM shuts the server down gracefully, after which uvicorn re-raises the signal,
so the process ends as killed by SIGTERM (status -15 in Python's subprocess).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunedock.runtime.engines.base import Engine, ModelFormat, ModelLoadFailed, describe_exception
from tunedock.runtime.engines.batching_engine import (DEFAULT_BATCH_WAIT_SECONDS, DEFAULT_MAX_BATCH_SIZE,
                                                      DEFAULT_MAX_QUEUE_SIZE, BatchingOptions)
from tunedock.runtime.generation_defaults import (parse_generation_defaults, read_model_generation_defaults,
                                                   resolve_generation_defaults)

logger = logging.getLogger(__name__)

EXIT_LOAD_FAILED = 3
EXIT_START_FAILED = 4
EXIT_INTERRUPTED = 130
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
GIL_SWITCH_INTERVAL_SECONDS = 0.001


def main(argv: Sequence[str] | None = None) -> int:
    """Run the model server; return the exit status (see the module docstring)."""
    args = _build_parser().parse_args(argv)
    _configure_environment(args.threads)
    # The engine thread needs the GIL once per generated token, and the event loop thread
    # keeps it for up to the switch interval (5 ms by default) while it sends responses.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    model_path = Path(args.model_path).resolve()
    try:
        engine = _load_engine(args, model_path)
    except ModelLoadFailed as error:
        logger.error("Loading the model failed", exc_info=error.__cause__ is not None)
        return _fail(EXIT_LOAD_FAILED, f"model load failed: {error.message}")
    except Exception as error:  # A bug or model code: still report it as a load failure.
        logger.exception("Loading the model failed with an unexpected error")
        return _fail(EXIT_LOAD_FAILED, f"model load failed: unexpected {describe_exception(error)}")
    return _serve(engine, model_path, args)


def _serve(engine: Engine, model_path: Path, args: argparse.Namespace) -> int:
    # Imported after loading so that a load failure does not pay for importing uvicorn.
    from tunedock.runtime.app import ServerSettings, create_app
    from tunedock.runtime.server import bind_listening_socket, serve, write_port_file

    defaults = resolve_generation_defaults(read_model_generation_defaults(model_path), args.generation_defaults)
    logger.info("Defaults for unset request parameters: %s", defaults)
    settings = ServerSettings(model_path=str(model_path), served_model=args.served_model or model_path.name,
                              generation_defaults=defaults,
                              access_token=os.environ.pop(REPLICA_TOKEN_VARIABLE, None) or None)
    app = create_app(engine, settings)
    try:
        sock = bind_listening_socket(args.host)
        port = sock.getsockname()[1]
    except OSError as error:
        return _fail(EXIT_START_FAILED, f"model server failed to start: {error}")

    engine.start()
    try:
        # The port file appears only once the engine runs, so a ready replica serves requests at once.
        write_port_file(Path(args.port_file), port)
    except OSError as error:
        engine.stop()
        return _fail(EXIT_START_FAILED, f"model server failed to start: {error}")
    logger.info("Serving %s on http://%s:%d", settings.served_model, args.host, port)
    try:
        serve(app, sock, args.log_level)
    except KeyboardInterrupt:
        # uvicorn re-raises SIGINT after its graceful shutdown, which Python turns into this.
        return EXIT_INTERRUPTED
    finally:
        engine.stop()
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tunedock.runtime",
        description="Serve one model on the OpenAI API routes, on a free port of a loopback address.")
    parser.add_argument("--model-path", required=True, help="Hugging Face model directory to load.")
    parser.add_argument("--format", required=True, choices=[f.value for f in ModelFormat],
                        help="Kind of model, which selects the transformers Auto class and the routes.")
    parser.add_argument("--port-file", required=True,
                        help="File to write the listening port to once the model is loaded.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: %(default)s).")
    parser.add_argument("--engine", default="transformers", help="Inference engine: transformers or "
                                                                  "ctranslate2 (default: %(default)s).")
    parser.add_argument("--quantization",
                        help="For the ctranslate2 engine, the compute type, such as int8 or float32 (default: "
                             "the type the weights were converted to). For the transformers engine, the dtype "
                             "to load the weights in: float32, bfloat16, float16 (CUDA only), or none for the "
                             "stored dtype on CUDA and float32 on CPU (default: none).")
    parser.add_argument("--device", default="cpu", help="Device: cpu, cuda or cuda:<index> (default: cpu).")
    parser.add_argument("--threads", type=_positive_int,
                        help="CPU threads for model operations (default: the engine's choice).")
    parser.add_argument("--max-batch-size", type=_positive_int, default=DEFAULT_MAX_BATCH_SIZE,
                        help="Sequences processed together: rows decoded in one step, or embedding inputs "
                             "in one forward pass (default: %(default)s).")
    parser.add_argument("--max-queue-size", type=_positive_int, default=DEFAULT_MAX_QUEUE_SIZE,
                        help="Requests that may wait for a place in the batch; more get 429 with "
                             "Retry-After (default: %(default)s).")
    parser.add_argument("--batch-wait-ms", type=_non_negative_float, default=DEFAULT_BATCH_WAIT_SECONDS * 1000,
                        help="Milliseconds an idle engine waits after a request for others to batch "
                             "with (default: %(default)s).")
    parser.add_argument("--generation-defaults", type=_generation_defaults, default={}, metavar="JSON",
                        help="JSON object with any of temperature, max_tokens, top_p, top_k and stop, "
                             "used when a request leaves them unset; they take precedence over the "
                             "model's generation_config.json.")
    parser.add_argument("--served-model", help="Model name for responses whose request names none "
                                               "(default: the model directory's name).")
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, type=str.upper,
                        help="Logging level (default: %(default)s).")
    return parser


REPLICA_TOKEN_VARIABLE = "TUNEDOCK_REPLICA_TOKEN"


def _configure_environment(threads: int | None) -> None:
    # Set before transformers and torch are imported, which read them at import time.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if threads is not None:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def _load_engine(args: argparse.Namespace, model_path: Path) -> Engine:
    from tunedock.runtime.engines import create_engine

    started = time.perf_counter()
    options = BatchingOptions(max_batch_size=args.max_batch_size, max_queue_size=args.max_queue_size,
                              batch_wait_seconds=args.batch_wait_ms / 1000)
    engine = create_engine(args.engine, options, threads=args.threads, compute_type=args.quantization)
    model_format = ModelFormat(args.format)
    engine.load(model_path, model_format, args.device)
    logger.info("Loaded the %s model from %s with the %s engine in %.2f s",
                model_format, model_path, args.engine, time.perf_counter() - started)
    return engine


def _fail(status: int, last_line: str) -> int:
    # The control plane shows the last lines of stderr as the deployment's failure reason.
    logging.shutdown()
    sys.stderr.write(last_line.replace("\n", " ") + "\n")
    sys.stderr.flush()
    return status


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _generation_defaults(text: str) -> dict[str, Any]:
    try:
        return parse_generation_defaults(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
