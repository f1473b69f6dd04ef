"""Command line entry point (filled in by the CLI work)."""
import sys


def main(argv=None) -> int:
    print("svgd-rewrite: the command line is not available yet", file=sys.stderr)
    return 2
