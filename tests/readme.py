"""README.md's marked examples, for the tests that run them exactly as printed.

A fenced block right after `<!-- readme-test: WHERE -->` is an example the
tests run: WHERE names the hosts of the install walkthrough (A, B, C, or
"every host") or what the block is (a compose file).
"""

import os
import re

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
_BLOCK = re.compile(r"<!-- readme-test: ([^>]+?) -->\s*\n```[a-z]*\n(.*?)```", re.S)


def blocks():
    """[(where, text)] in the order the README gives them."""
    with open(README) as f:
        return [(m.group(1).strip(), m.group(2)) for m in _BLOCK.finditer(f.read())]


def commands(where):
    """The command lines of the blocks marked `where`, in order."""
    return [line for w, text in blocks() if w == where for line in text.splitlines() if line.strip()]


def block(where):
    return next(text for w, text in blocks() if w == where)
