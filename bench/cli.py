"""Command line of the benchmarks."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = "actor"
    if argv and argv[0] in {"actor", "e2e", "client", "demo", "replay", "chaos"}:
        command = argv.pop(0)
    if command == "demo":
        from bench import demo

        return demo.main(argv)
    if command == "e2e":
        from bench import e2e
        from bench.e2e import cli

        parser = argparse.ArgumentParser(
            prog="python -m bench e2e",
            description=e2e.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        cli.add_arguments(parser)
        return cli.main(parser.parse_args(argv))
    if command == "client":
        from bench import client
        from bench.client import cli as client_cli

        parser = argparse.ArgumentParser(
            prog="python -m bench client",
            description=client.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        client_cli.add_arguments(parser)
        return client_cli.main(parser.parse_args(argv))
    if command == "chaos":
        from bench import chaos

        parser = argparse.ArgumentParser(
            prog="python -m bench chaos",
            description=chaos.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        chaos.add_arguments(parser)
        return chaos.main(parser.parse_args(argv))
    if command == "replay":
        from bench import replay
        from bench.replay import cli as replay_cli

        parser = argparse.ArgumentParser(
            prog="python -m bench replay",
            description=replay.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        replay_cli.add_arguments(parser)
        return replay_cli.main(parser.parse_args(argv))
    from bench import actor

    parser = argparse.ArgumentParser(
        prog="python -m bench [actor]",
        description=actor.__doc__,
        epilog="`python -m bench e2e --help`: the end-to-end benchmark through Redis; "
        "`python -m bench client --help`: the client's round trip; `python -m bench replay --help`: "
        "serving against offline on a price file; `python -m bench chaos --help`: faults, counted; "
        "`python -m bench demo`: the demo.",
    )
    actor.add_arguments(parser)
    return actor.main(parser.parse_args(argv))
