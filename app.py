"""Open the Stable Diffusion Attention Explorer in a browser: ``python app.py [--model M] [--share] ...``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

STARTED = time.perf_counter()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Stable Diffusion Attention Explorer (a Gradio app).")
    parser.add_argument("--model", default=None, help="diffusers directory or Hub id (default: the embedded model)")
    parser.add_argument("--share", action="store_true", help="also serve a public *.gradio.live link")
    # A Hugging Face Space (and Docker images) set GRADIO_SERVER_NAME / GRADIO_SERVER_PORT: follow them by default.
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    parser.add_argument("--host", default=host, help="address to listen on (0.0.0.0: the whole network)")
    parser.add_argument("--port", type=int, default=port, help="port (0: any free port)")
    parser.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args(argv)
    if args.auth is not None and (":" not in args.auth or not all(args.auth.split(":", 1))):
        parser.error("--auth must look like USER:PASS")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0..65535")
    return args


def share_warning(args: argparse.Namespace) -> str | None:
    """The warning to print when a public link is asked for without a login (None when there is nothing to say)."""
    if args.share and args.auth is None:
        return "warning: --share without --auth: anyone with the link can use this machine. Add --auth USER:PASS."
    return None


def _stop(signum, frame) -> None:
    """SIGTERM (a service manager, a container stop, a Space restart) stops the app as Ctrl-C does."""
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    warning = share_warning(args)
    if warning:
        print(warning, file=sys.stderr, flush=True)

    from demo.app import build_demo, launch_options, shutdown
    from explain.diffusion.loading import ModelLoadError
    from explain.engine.session import Engine

    engine = Engine(args.model, args.device)
    try:
        if args.model is not None:
            engine.pipeline()  # a checkpoint of your own: fail now, with the reason, rather than on first use
        demo = build_demo(engine, shared=args.share or "SPACE_ID" in os.environ)  # a public link or a Space
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    signal.signal(signal.SIGTERM, _stop)
    try:
        demo.launch(
            server_name=args.host,
            server_port=args.port or None,
            share=args.share,
            auth=auth,
            prevent_thread_lock=True,
            **launch_options(),
        )
        print(f"* Served in {time.perf_counter() - STARTED:.1f} s")
        if args.share and not demo.share_url:
            print(
                "warning: the share tunnel could not be reached; the app is serving locally only at",
                demo.local_url,
                file=sys.stderr,
            )
        engine.start_warm_up()
        demo.block_thread()  # returns on Ctrl-C (SIGINT) or SIGTERM
    except KeyboardInterrupt:
        pass  # a signal before serving began
    finally:
        shutdown(demo)  # every file the app handed out goes, however it was stopped
    return 0


if __name__ == "__main__":
    from demo.exiting import exit_process

    exit_process(main())  # after the app's cleanup: a stuck server thread cannot keep the process alive
