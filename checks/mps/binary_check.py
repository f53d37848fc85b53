#!/usr/bin/env python3
"""Checks a patch's .mm context against the wheel's libtorch_cpu.dylib of the same version.

usage: binary_check.py PATCH DYLIB FACTS

The macOS arm64 wheel's libtorch_cpu.dylib keeps its symbol names and string literals, so it
fingerprints the .mm sources it was built from: every string literal (6+ characters, no escapes)
on a context or removed line of a .mm hunk must occur in it, every function defined on such a
line must be named in it, and every fact in FACTS must hold (see checks/mps/binary-facts-*.txt).
Prints a one-line summary, then one line per problem; exits 1 when there is a problem.
"""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'scripts', 'patchtools'))
import patchtools  # noqa: E402  (the project's one diff parser)

patch, dylib, facts_path = sys.argv[1:4]
data = open(dylib, 'rb').read()
problems, literals, functions = [], set(), set()
for f in patchtools.read_patch(patch):
    path = f.path
    if not path.endswith('.mm') or f.is_new:
        continue
    # the context and removed lines of its hunks
    for text in (t for h in f.hunks for t in h.old_lines()):
        for lit in re.findall(r'"((?:[^"\\]|\\.)*)"', text):
            if '\\' not in lit and len(lit) >= 6:
                literals.add((path, lit))
        m = re.match(r'^(?:static\s+|inline\s+)*[\w:<>,*&\s]*?\b\w+::(\w+)\(|^(?:static\s+|inline\s+)*[\w:<>,*&]+[\s*&]+(\w+)\(', text)
        if m and (m.group(1) or m.group(2)) not in ('if', 'for', 'while', 'switch', 'return'):
            functions.add((path, m.group(1) or m.group(2)))
for path, lit in sorted(literals):
    if lit.encode() not in data:
        problems.append('literal "%s" of %s is not in the binary' % (lit, path))
for path, name in sorted(functions):
    if name.encode() not in data:
        problems.append('function %s of %s is not in the binary' % (name, path))
_symbols = None


def symbol_address(name):
    """Address of a defined symbol, from llvm-nm (Debian's clang brings llvm-nm-14)."""
    global _symbols
    if _symbols is None:
        import shutil, subprocess
        nm = shutil.which('llvm-nm') or shutil.which('llvm-nm-14')
        if nm is None:
            return None
        out = subprocess.run([nm, '--defined-only', dylib], capture_output=True, text=True).stdout
        _symbols = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3:
                _symbols[parts[2]] = int(parts[0], 16)
    return _symbols.get(name)


nfacts = 0
for raw in open(facts_path):
    line = raw.rstrip('\n')
    if not line.strip() or line.lstrip().startswith('#'):
        continue
    kind, _, rest = line.partition(' ')
    needle = rest.encode('latin-1').decode('unicode_escape').encode('latin-1')
    nfacts += 1
    if kind == 'dispatches':
        if not re.search(re.escape(needle) + rb'[\w$.]*_block_invoke', data):
            problems.append('%s dispatches no block in the binary' % rest)
    elif kind == 'empty-function':
        # the symbol's first instruction is arm64 `ret` (c0 03 5f d6): the function does nothing.
        # Symbol addresses from llvm-nm; in these dylibs __TEXT starts at address 0 and file offset 0.
        addr = symbol_address(rest)
        if addr is None:
            problems.append('symbol %s not found (llvm-nm)' % rest)
        elif data[addr:addr + 4] != bytes.fromhex('c0035fd6'):
            problems.append('%s does not start with ret (found %s)' % (rest, data[addr:addr + 4].hex()))
    elif kind in ('present', 'absent'):
        if (needle in data) != (kind == 'present'):
            problems.append('expected %r to be %s the binary' % (needle, 'in' if kind == 'present' else 'absent from'))
    else:
        problems.append('unknown fact kind %r in %s' % (kind, facts_path))
print('%d literals, %d functions, %d facts' % (len(literals), len(functions), nfacts))
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
