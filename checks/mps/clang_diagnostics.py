#!/usr/bin/env python3
"""Reads clang's diagnostics (one -fsyntax-only run) into lines for checks/mps/objc-syntax.sh.

usage: clang_diagnostics.py TREE RAW STATUS

RAW holds what clang printed, STATUS its exit status. Prints one "KIND<TAB>WHERE<TAB>MESSAGE" line
per diagnostic (KIND error|warning; a fatal error counts as an error; WHERE: "tree:PATH" inside TREE,
without line numbers, "at:FILE:LINE:COL" elsewhere, "clang" for the driver, "crash" when clang
crashed), an "error" line when clang's own total exceeds what was parsed, then "status<TAB>N".
"""
import re, sys
tree, raw, rc = sys.argv[1].rstrip('/') + '/', sys.argv[2], int(sys.argv[3])
located = re.compile(r'^(?P<file>.+?):(?P<line>\d+):(?:(?P<col>\d+):)? (?P<kind>fatal error|error|warning): (?P<msg>.*)$')
driver = re.compile(r'^(?:\S*/)?clang(?:\+\+)?(?:-\d+)?: (?P<kind>fatal error|error|warning): (?P<msg>.*)$')
bare = re.compile(r'^(?P<kind>fatal error|error|warning): (?P<msg>.*)$')
totals = re.compile(r'^(?:(?P<w>\d+) warnings? )?(?:and )?(?:(?P<e>\d+) errors? )?generated\.$')
out, crashed, said_w, said_e = [], False, 0, 0
for line in open(raw, errors='replace').read().splitlines():
    m = located.match(line)
    if m:
        kind = 'warning' if m['kind'] == 'warning' else 'error'
        if m['file'].startswith(tree):
            where = 'tree:' + m['file'][len(tree):]
        else:
            where = 'at:%s:%s:%s' % (m['file'], m['line'], m['col'] or '')
        out.append((kind, where, m['msg']))
        continue
    m = driver.match(line) or bare.match(line)
    if m:
        out.append(('warning' if m['kind'] == 'warning' else 'error', 'clang', m['msg']))
        continue
    if line.startswith('PLEASE submit a bug report') or line.startswith('Stack dump:'):
        crashed = True
        continue
    m = totals.match(line)
    if m and (m['w'] or m['e']):
        said_w, said_e = int(m['w'] or 0), int(m['e'] or 0)
if crashed:
    out.append(('error', 'crash', 'clang crashed (exit status %d)' % rc))
n_w = sum(1 for k, _, _ in out if k == 'warning')
n_e = sum(1 for k, _, _ in out if k == 'error')
if said_w > n_w or said_e > n_e:
    out.append(('error', 'clang', 'clang reported %d warnings and %d errors, %d and %d parsed' % (said_w, said_e, n_w, n_e)))
for k, w, msg in out:
    print('%s\t%s\t%s' % (k, w, msg.replace('\t', ' ')))
print('status\t%d' % rc)
