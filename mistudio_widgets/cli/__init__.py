"""The ``mistudio`` command line: the parser and command groups (``main``), feature discovery and
labelling (``features``), steering (``steer``), sharing (``share``), the demo and the chat server."""

from .main import Output, build_parser, main, printable

__all__ = ["Output", "build_parser", "main", "printable"]
