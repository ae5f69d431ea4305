"""``llm-assets serve``: the embedded local model as a standalone OpenAI-compatible server.

Example::

    $ llm-assets serve --port 8080
    $ OPENAI_BASE_URL=http://127.0.0.1:8080/v1 python my_script.py
"""

import argparse

from llm_assets.errors import LLMAssetsError
from llm_assets.local import server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="llm-assets", description="llm_assets command line")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the embedded local model on an OpenAI-compatible API")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    forwarded = ["--host", args.host, "--port", str(args.port)]
    if args.threads:
        forwarded += ["--threads", str(args.threads)]
    try:
        server.main(forwarded)
    except LLMAssetsError as error:  # a missing extra, a model file missing: one line, no traceback
        parser.exit(2, f"llm-assets: {error}\n")


if __name__ == "__main__":
    main()
