"""What every command of the package does the same way around absl's ``app.run``.

- An argument that is not a flag, or a bad flag, ends with one line, ``<prog>: --x=v is not allowed; allowed: ...`` (absl's own
  parse error is two lines, ``FATAL Flags parsing error: ...`` and a hint), exit status 1.
- ``--help`` prints the command's docstring and its own flags, by group, and exits 0 (absl
  exits 1 after help, which reads as a failure in scripts and CI); ``--helpfull`` adds absl's
  flags and also exits 0.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import re
import sys

from absl import app, flags

FLAGS = flags.FLAGS
SHORT_HELP = ("--help", "-help", "--helpshort", "-helpshort", "-?")
FULL_HELP = ("--helpfull", "-helpfull")


def bad_value(name: str, value, allowed: str) -> str:
    return f"--{name}={value!r} is not allowed; allowed: {allowed}"


def allowed(name: str) -> str:
    """What a flag's parser accepts, in words (its enum values or its bounds)."""
    parser = FLAGS[name].parser
    if isinstance(parser, flags.EnumParser):
        return ", ".join(parser.enum_values)
    low, high = getattr(parser, "lower_bound", None), getattr(parser, "upper_bound", None)
    if isinstance(parser, flags.IntegerParser) and high is None:
        return {0: "0 or a positive integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")
    if low is not None and high is not None:
        return f"{'an integer' if isinstance(parser, flags.IntegerParser) else 'a number'} in [{low}, {high}]"
    if low is not None:
        return f"a number >= {low}"
    return parser.syntactic_help


_PARSE_ERROR = re.compile(r"^flags? --?(\w+)=(.*?): (.*)$")


def one_line(err: flags.Error) -> str:
    """absl's parse or validation error as one line: a validator of ours already wrote it
    (``flag --x=v: --x=v is not allowed; ...`` gives the part after the prefix); a parser's
    refusal (``flag --method=sgd: value should be one of <...>``) becomes
    ``--method='sgd' is not allowed; allowed: dgmw, ...``."""
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    ours = re.search(r": (--\w+=.* is not allowed.*)$", first)
    if ours:
        return ours.group(1)
    match = _PARSE_ERROR.match(first)
    if match and match.group(1) in FLAGS:
        name, value = match.group(1), match.group(2)
        parser = FLAGS[name].parser
        try:
            value = parser.convert(value) if isinstance(parser, (flags.IntegerParser, flags.FloatParser)) else value
        except ValueError:
            pass
        return bad_value(name, value, allowed(name))
    return first


def _short_help(doc: str, groups) -> str:
    parts = [doc.strip(), "", "flags (--helpfull adds absl's own):"]
    parts += [FLAGS.module_help(group) for group in groups]
    return "\n".join(parts) + "\n"


def run(main, prog: str, doc: str, groups) -> None:
    """``app.run(main)`` with one-line flag errors and help that exits 0. ``groups``: the
    module names the command's flags are defined under (``--help`` lists them in this order)."""
    if any(arg in SHORT_HELP for arg in sys.argv[1:]):
        sys.stdout.write(_short_help(doc, groups))
        sys.exit(0)

    def parse(argv):
        try:
            return FLAGS(argv)
        except flags.Error as err:
            sys.exit(f"{prog}: {one_line(err)}")

    def checked(argv):
        if len(argv) > 1:
            sys.exit(f"{prog}: unexpected arguments {argv[1:]}; pass everything as --flags")
        return main(argv)

    try:
        app.run(checked, flags_parser=parse)
    except SystemExit as done:
        if done.code == 1 and any(arg in FULL_HELP for arg in sys.argv[1:]):
            sys.exit(0)
        raise
