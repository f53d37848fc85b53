#!/usr/bin/env python3
"""Reads the project's unified diffs (git format-patch / git diff output) and lock files: the one
parser that scripts/check-patch.sh, scripts/fetch-mps-context.sh, scripts/vendor-pytorch.sh,
checks/mps/emu/prepare-trees.sh and checks/mps/binary_check.py share. Standard library only.

As a program (for the shell scripts; each prints plain lines):
  patchtools.py files PATCH               "PATH new|old" per file of PATCH (new: the patch creates it)
  patchtools.py hunks PATCH PATH...       the number of hunks PATCH has in those files
  patchtools.py preimage PATCH PATH       a pre-image of PATH rebuilt from PATCH's hunks: each hunk's
                                          old lines at its stated line numbers, unique filler lines
                                          in between and three after
  patchtools.py drop-lines FILE SPEC      FILE without the lines SPEC names (e.g. 6,68-73,75;
                                          numbered from 1; an empty SPEC drops none)
  patchtools.py lock LOCK KEY [PATH]      the KEY= lines of a lock file, one per line: file as
                                          "PATH SHA256", compile-drop as "PATH LINES", standin as
                                          "VERSION PATH", any other key as its value; with PATH,
                                          only that path's lines, without the path
Exit status: 0, also when nothing matches (as sed -n would); 2 on bad arguments or a malformed input.
"""
import re
import sys

_DIFF = re.compile(r"^diff --git a/(\S+) b/(\S+)")
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$")


class PatchError(ValueError):
    """A diff that does not follow the unified format (a hunk shorter than its header says)."""


class Hunk:
    """One @@ block: where it sits in the old and the new file, and its lines as (tag, text) with
    tag ' ' (context), '-' (removed) or '+' (added). A "\\ No newline at end of file" marker sets
    old_no_newline or new_no_newline (on the side of the line before it) instead of being a line."""

    def __init__(self, old_start, old_count, new_start, new_count, section=""):
        self.old_start, self.old_count = old_start, old_count
        self.new_start, self.new_count = new_start, new_count
        self.section = section
        self.lines = []
        self.old_no_newline = self.new_no_newline = False

    def old_lines(self):
        """The old file's lines this hunk covers (context and removed), in order."""
        return [t for tag, t in self.lines if tag in " -"]

    def new_lines(self):
        """The new file's lines this hunk covers (context and added), in order."""
        return [t for tag, t in self.lines if tag in " +"]

    def removed(self):
        """Line numbers (old file) of the removed lines."""
        return self._numbers("-", self.old_start, " -")

    def added(self):
        """Line numbers (new file) of the added lines."""
        return self._numbers("+", self.new_start, " +")

    def _numbers(self, want, start, side):
        out, n = [], start
        for tag, _ in self.lines:
            if tag not in side:
                continue
            if tag == want:
                out.append(n)
            n += 1
        return out


class FileDiff:
    """One file of a patch: its paths (a/ and b/), whether the patch creates or deletes it, and its
    hunks (none for a pure rename or mode change)."""

    def __init__(self, old_path, new_path):
        self.old_path, self.new_path = old_path, new_path
        self.is_new = self.is_deleted = False
        self.hunks = []

    @property
    def path(self):
        """The path the scripts name a file by: the a/ side of the diff --git line."""
        return self.old_path

    def removed_ranges(self):
        return to_ranges(n for h in self.hunks for n in h.removed())

    def added_ranges(self):
        return to_ranges(n for h in self.hunks for n in h.added())


def parse_patch(text):
    """The FileDiffs of a patch text, in order. Text before the first "diff --git" line (a mail
    header, a commit message) and after the last hunk of a file (a signature) is ignored."""
    files, cur = [], None
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        m = _DIFF.match(line)
        if m:
            cur = FileDiff(m.group(1), m.group(2))
            files.append(cur)
            continue
        if cur is None:
            continue
        if line == "--- /dev/null" or line.startswith("new file mode"):
            cur.is_new = True
        elif line == "+++ /dev/null" or line.startswith("deleted file mode"):
            cur.is_deleted = True
        m = _HUNK.match(line)
        if not m:
            continue
        h = Hunk(int(m.group(1)), int(m.group(2) or 1), int(m.group(3)), int(m.group(4) or 1), m.group(5))
        old_left, new_left = h.old_count, h.new_count
        while old_left > 0 or new_left > 0 or (i < len(lines) and lines[i].startswith("\\")):
            if i >= len(lines):
                raise PatchError("%s: hunk @@ -%d,%d +%d,%d @@ ends early" % (
                    cur.path, h.old_start, h.old_count, h.new_start, h.new_count))
            body = lines[i]
            i += 1
            tag = body[:1]
            if tag == "\\":
                prev = h.lines[-1][0] if h.lines else " "
                if prev in " -":
                    h.old_no_newline = True
                if prev in " +":
                    h.new_no_newline = True
                continue
            if tag == "" and body == "":
                tag = " "  # a context line whose single space was stripped (some mailers do)
            if tag not in " +-":
                raise PatchError("%s: unexpected line in a hunk: %r" % (cur.path, body[:60]))
            if tag in " -":
                old_left -= 1
            if tag in " +":
                new_left -= 1
            if old_left < 0 or new_left < 0:
                raise PatchError("%s: hunk longer than its header says" % cur.path)
            h.lines.append((tag, body[1:]))
        cur.hunks.append(h)
    return files


def read_patch(path):
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse_patch(f.read())


def preimage(files, path):
    """Rebuilds a pre-image of PATH from the hunks: each hunk's old lines at its stated old line
    numbers, "/* pre-image gap N */" lines in between, three "/* pre-image tail N */" lines after."""
    out = []
    for f in files:
        if f.path != path:
            continue
        for h in f.hunks:
            while len(out) < h.old_start - 1:
                out.append("/* pre-image gap %d */" % len(out))
            out += h.old_lines()
    out += ["/* pre-image tail %d */" % i for i in range(3)]
    return out


def expand_ranges(spec):
    """"6,68-73,75" -> [6, 68, 69, 70, 71, 72, 73, 75] (sorted, no repeats); "" -> []."""
    out = set()
    for part in filter(None, spec.split(",")):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError("bad line range %r in %r" % (part, spec))
        out.update(range(int(lo), int(hi or lo) + 1))
    return sorted(out)


def to_ranges(numbers):
    """The inverse of expand_ranges: [1, 2, 3, 7] -> "1-3,7"."""
    nums, parts = sorted(set(numbers)), []
    for n in nums:
        if parts and parts[-1][1] == n - 1:
            parts[-1][1] = n
        else:
            parts.append([n, n])
    return ",".join(str(a) if a == b else "%d-%d" % (a, b) for a, b in parts)


def drop_lines(data, spec):
    """The bytes DATA without the lines SPEC names (numbered from 1); every line kept ends in a
    newline, also the last."""
    drop = set(expand_ranges(spec))
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return b"".join(l + b"\n" for n, l in enumerate(lines, 1) if n not in drop)


class Lock:
    """A lock file (vendor/v<VERSION>/pytorch.lock, vendor/v<VERSION>/mps-context.lock): KEY=VALUE
    lines, '#' comments and blank lines ignored, a key may repeat. Typed views of the repeated
    keys: files [(path, sha256)], drops [(path, lines, reason)], standins [(version, path, reason)]."""

    def __init__(self, text):
        self.entries = []
        for n, line in enumerate(text.split("\n"), 1):
            if not line.strip() or line.startswith("#"):
                continue
            key, eq, value = line.partition("=")
            if not eq or not re.fullmatch(r"[a-z][a-z-]*", key):
                raise ValueError("line %d is not KEY=VALUE: %r" % (n, line[:60]))
            self.entries.append((key, value))

    def values(self, key):
        return [v for k, v in self.entries if k == key]

    def value(self, key):
        """The first value of KEY, or None."""
        vals = self.values(key)
        return vals[0] if vals else None

    @property
    def files(self):
        return [tuple(v.split(" ", 1)) for v in self.values("file") if " " in v]

    @property
    def drops(self):
        out = []
        for v in self.values("compile-drop"):
            m = re.match(r"(\S+) ([0-9,-]*) (.*)$", v)
            if m:
                out.append(m.groups())
        return out

    @property
    def standins(self):
        out = []
        for v in self.values("standin"):
            m = re.match(r"([0-9.]+) (\S+)(?: (.*))?$", v)
            if m:
                out.append((m.group(1), m.group(2), m.group(3) or ""))
        return out

    def rows(self, key):
        """KEY's lines as the shell scripts read them: tuples of fields, the path first where
        there is one (standin: version first, then path)."""
        if key == "file":
            return self.files
        if key == "compile-drop":
            return [(p, lines) for p, lines, _ in self.drops]
        if key == "standin":
            return [(v, p) for v, p, _ in self.standins]
        return [(v,) for v in self.values(key)]


def read_lock(path):
    with open(path) as f:
        return Lock(f.read())


def main(argv):
    out = sys.stdout
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    cmd, args = argv[0], argv[1:]
    try:
        if cmd == "files" and len(args) == 1:
            for f in read_patch(args[0]):
                out.write("%s %s\n" % (f.path, "new" if f.is_new else "old"))
        elif cmd == "hunks" and len(args) >= 1:
            want = set(args[1:])
            out.write("%d\n" % sum(len(f.hunks) for f in read_patch(args[0]) if f.path in want))
        elif cmd == "preimage" and len(args) == 2:
            out.write("\n".join(preimage(read_patch(args[0]), args[1])) + "\n")
        elif cmd == "drop-lines" and len(args) == 2:
            with open(args[0], "rb") as f:
                data = f.read()
            sys.stdout.flush()
            sys.stdout.buffer.write(drop_lines(data, args[1]))
        elif cmd == "lock" and len(args) in (2, 3):
            rows = read_lock(args[0]).rows(args[1])
            if len(args) == 3:
                path_at = 1 if args[1] == "standin" else 0
                rows = [r[:path_at] + r[path_at + 1:] for r in rows if len(r) > 1 and r[path_at] == args[2]]
            for r in rows:
                out.write(" ".join(r) + "\n")
        else:
            print("patchtools: bad arguments: %s (try --help)" % " ".join(argv), file=sys.stderr)
            return 2
    except (PatchError, ValueError) as e:
        print("patchtools: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
