"""The web demo: sample from a pipeline folder and step through its chain by hand, in a browser on this machine.

    guided-diffusers-app                                   # demo_output/pipeline (written by `make demo`)
    guided-diffusers-app --pipeline DIR --port 7861

Serves on 127.0.0.1 only (no share link, no analytics); open the printed address in a browser.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default="demo_output/pipeline", help="the pipeline folder loaded at first")
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address: 127.0.0.1, localhost or ::1")
    parser.add_argument("--port", type=int, default=7860)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        sys.exit('error: expected Gradio installed for the web demo, got it missing: install the [app] extra '
                 '(pip install "./guided-diffusers[app]" from a checkout) or pip install "gradio>=6.31,<7"')
    from guided_diffusers.app.web import check_loopback, launch

    try:
        check_loopback(args.host)
    except ValueError as error:
        sys.exit(f"error: {error}")
    launch(args.pipeline, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
