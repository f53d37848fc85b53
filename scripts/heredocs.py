#!/usr/bin/env python3
"""Lists the here-documents of the repository's shell scripts with their lengths.

    python3 scripts/heredocs.py [--max N] [FILE ...]

Without FILEs: every *.sh file git tracks (or finds, outside a git checkout). One line per
here-document, "FILE:LINE: N lines (<<TAG)", longest first. With --max N, exits 1 when one is longer
than N lines (the project keeps them at 10 or fewer: longer programs live in their own files).
"""
import os
import re
import subprocess
import sys

# <<TAG, <<-TAG, <<'TAG', <<"TAG"; not the here-string <<<.
OPENER = re.compile(r"(?<!<)<<(-?)\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2")


def heredocs(text):
    """Yields (line number of the opener, body line count, tag) for each here-document of a shell
    text. Several openers on one line are read in order, each body after the one before it."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        opened = [] if line.lstrip().startswith("#") else OPENER.findall(line)
        start = i + 1
        i += 1
        for dash, _quote, tag in opened:
            n = 0
            while i < len(lines):
                body = lines[i].lstrip("\t") if dash else lines[i]
                i += 1
                if body == tag:
                    break
                n += 1
            yield start, n, tag


def shell_files(root):
    try:
        out = subprocess.run(["git", "-C", root, "ls-files", "*.sh"], capture_output=True, text=True, check=True).stdout
        return [os.path.join(root, p) for p in out.split()]
    except (OSError, subprocess.CalledProcessError):
        found = []
        for d, _, names in os.walk(root):
            found += [os.path.join(d, n) for n in names if n.endswith(".sh")]
        return sorted(found)


def main(argv):
    limit = None
    if argv[:1] == ["--max"]:
        limit, argv = int(argv[1]), argv[2:]
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    files = argv or shell_files(root)
    found = []
    for f in files:
        with open(f, errors="replace") as fh:
            found += [(n, os.path.relpath(f, root), line, tag) for line, n, tag in heredocs(fh.read())]
    found.sort(key=lambda t: (-t[0], t[1], t[2]))
    for n, f, line, tag in found:
        print(f"{f}:{line}: {n} lines (<<{tag})")
    too_long = [t for t in found if limit is not None and t[0] > limit]
    if too_long:
        print(f"heredocs: {len(too_long)} here-document(s) longer than {limit} lines", file=sys.stderr)
        return 1
    if limit is not None:
        print(f"heredocs: {len(found)} here-document(s) in {len(files)} shell files, none longer than {limit} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
