"""Runs the Python blocks of README.md and docs/*.md as tests (Sybil).

Each page's blocks run in order in one namespace. A block that is a fragment
(a method without its class, a call on a trainer trained elsewhere) is marked
`<!-- skip: next -->` just above it; set-up a page needs but does not show goes
in an `<!-- invisible-code-block: python -->` comment.
"""

from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

pytest_collect_file = Sybil(
    parsers=[PythonCodeBlockParser(), SkipParser()],
    patterns=["README.md", "docs/*.md"],
).pytest()
