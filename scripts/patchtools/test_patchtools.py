#!/usr/bin/env python3
"""Tests of patchtools.py: the real patches of patches/ and the lock files of vendor/, and small
made-up diffs for the edge cases (new and deleted files, hunks without context, "\\ No newline at
end of file", a one-line hunk header without counts). Standard library only.

usage: test_patchtools.py [unittest arguments]
"""
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import patchtools as pt  # noqa: E402

V211 = os.path.join(ROOT, "patches", "v2.11.0", "tch-streams-mps-v2.11.0.patch")
V213 = os.path.join(ROOT, "patches", "v2.13.0", "tch-streams-mps-v2.13.0.patch")

NEW_FILE = """\
diff --git a/dir/new.h b/dir/new.h
new file mode 100644
index 0000000..e69de29
--- /dev/null
+++ b/dir/new.h
@@ -0,0 +1,2 @@
+#pragma once
+int f();
"""

NO_CONTEXT = """\
diff --git a/a.txt b/a.txt
index 1111111..2222222 100644
--- a/a.txt
+++ b/a.txt
@@ -3 +3 @@ section heading
-old three
+new three
@@ -10,0 +11,2 @@
+added eleven
+added twelve
@@ -20,2 +21,0 @@
-gone twenty
-gone twenty-one
"""

NO_NEWLINE = """\
diff --git a/b.txt b/b.txt
index 1111111..2222222 100644
--- a/b.txt
+++ b/b.txt
@@ -1,2 +1,2 @@
 one
-two
\\ No newline at end of file
+two
"""

DELETED = """\
From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001
Subject: [PATCH] remove c

---
diff --git a/c.txt b/c.txt
deleted file mode 100644
index 3333333..0000000
--- a/c.txt
+++ /dev/null
@@ -1,2 +0,0 @@
-c one
-c two
--- 
2.39.0
"""


class MadeUpDiffs(unittest.TestCase):
    def test_new_file(self):
        (f,) = pt.parse_patch(NEW_FILE)
        self.assertEqual((f.path, f.is_new, f.is_deleted), ("dir/new.h", True, False))
        (h,) = f.hunks
        self.assertEqual((h.old_start, h.old_count, h.new_start, h.new_count), (0, 0, 1, 2))
        self.assertEqual(h.new_lines(), ["#pragma once", "int f();"])
        self.assertEqual(h.old_lines(), [])
        self.assertEqual(f.added_ranges(), "1-2")
        self.assertEqual(f.removed_ranges(), "")

    def test_hunks_without_context(self):
        (f,) = pt.parse_patch(NO_CONTEXT)
        self.assertFalse(f.is_new)
        self.assertEqual([(h.old_start, h.old_count, h.new_start, h.new_count) for h in f.hunks],
                         [(3, 1, 3, 1), (10, 0, 11, 2), (20, 2, 21, 0)])
        self.assertEqual(f.hunks[0].section, " section heading")
        self.assertEqual(f.removed_ranges(), "3,20-21")
        self.assertEqual(f.added_ranges(), "3,11-12")
        self.assertEqual(f.hunks[2].removed(), [20, 21])

    def test_no_newline_marker(self):
        (f,) = pt.parse_patch(NO_NEWLINE)
        (h,) = f.hunks
        self.assertTrue(h.old_no_newline)
        self.assertFalse(h.new_no_newline)
        self.assertEqual(h.old_lines(), ["one", "two"])
        self.assertEqual(h.new_lines(), ["one", "two"])
        self.assertEqual((h.removed(), h.added()), ([2], [2]))

    def test_deleted_file_and_mail_wrapping(self):
        (f,) = pt.parse_patch(DELETED)
        self.assertEqual((f.path, f.is_new, f.is_deleted), ("c.txt", False, True))
        # the signature "-- " after the last hunk is not a removed line
        self.assertEqual(f.hunks[0].old_lines(), ["c one", "c two"])

    def test_several_files(self):
        files = pt.parse_patch(NEW_FILE + NO_CONTEXT + NO_NEWLINE)
        self.assertEqual([(f.path, f.is_new) for f in files], [("dir/new.h", True), ("a.txt", False), ("b.txt", False)])

    def test_short_hunk_is_an_error(self):
        with self.assertRaises(pt.PatchError):
            pt.parse_patch(NO_CONTEXT.rsplit("\n", 2)[0] + "\n")

    def test_preimage_places_old_lines_at_their_numbers(self):
        lines = pt.preimage(pt.parse_patch(NO_CONTEXT), "a.txt")
        self.assertEqual(lines[:3], ["/* pre-image gap 0 */", "/* pre-image gap 1 */", "old three"])
        self.assertEqual(lines[19:21], ["gone twenty", "gone twenty-one"])
        self.assertEqual(lines[-3:], ["/* pre-image tail %d */" % i for i in range(3)])
        self.assertEqual(len(lines), 24)

    def test_ranges(self):
        self.assertEqual(pt.expand_ranges("6,68-73,75"), [6, 68, 69, 70, 71, 72, 73, 75])
        self.assertEqual(pt.expand_ranges(""), [])
        self.assertEqual(pt.expand_ranges("3,1-2,2"), [1, 2, 3])
        self.assertEqual(pt.to_ranges([75, 6, 68, 69, 70, 71, 72, 73]), "6,68-73,75")
        with self.assertRaises(ValueError):
            pt.expand_ranges("4-x")

    def test_drop_lines(self):
        self.assertEqual(pt.drop_lines(b"a\nb\nc\nd\n", "2-3"), b"a\nd\n")
        self.assertEqual(pt.drop_lines(b"a\nb\nc", "1"), b"b\nc\n")  # as awk: the last line ends in \n
        self.assertEqual(pt.drop_lines(b"a\nb\n", ""), b"a\nb\n")

    def test_lock(self):
        lock = pt.Lock("# comment\nrepo=o/r\ncommit=abc\nfile=p/x.mm 00ff\nfile=p/y.mm 11ee\n"
                       "compile-drop=p/x.mm 6,68-73 why it is dropped\nstandin=2.11.0 p/z.mm a reason\n"
                       "standin=2.11.0 p/w.mm\nrename=a:b\n")
        self.assertEqual(lock.value("repo"), "o/r")
        self.assertIsNone(lock.value("tag"))
        self.assertEqual(lock.files, [("p/x.mm", "00ff"), ("p/y.mm", "11ee")])
        self.assertEqual(lock.drops, [("p/x.mm", "6,68-73", "why it is dropped")])
        self.assertEqual(lock.standins, [("2.11.0", "p/z.mm", "a reason"), ("2.11.0", "p/w.mm", "")])
        self.assertEqual(lock.rows("standin"), [("2.11.0", "p/z.mm"), ("2.11.0", "p/w.mm")])
        self.assertEqual(lock.values("rename"), ["a:b"])
        with self.assertRaises(ValueError):
            pt.Lock("no equals sign here\n")


class RealPatches(unittest.TestCase):
    def test_v2_11_files(self):
        files = pt.read_patch(V211)
        self.assertEqual(len(files), 17)
        new = [f.path for f in files if f.is_new]
        self.assertIn("aten/src/ATen/mps/MPSStreamPoolCore.h", new)
        self.assertIn("aten/src/ATen/mps/MPSEventCore.h", new)
        self.assertNotIn("aten/src/ATen/mps/MPSStream.mm", new)
        self.assertEqual(len([f for f in files if f.path.endswith(".mm")]), 7)
        # check-patch's context line for v2.11.0: 32 hunks in the five .mm files its lock lists
        lock = pt.read_lock(os.path.join(ROOT, "vendor", "v2.11.0", "mps-context.lock"))
        mm = {p for p, _ in lock.files}
        self.assertEqual(len(mm), 5)
        self.assertEqual(sum(len(f.hunks) for f in files if f.path in mm), 32)

    def test_v2_13_mpsstream_hunks(self):
        files = {f.path: f for f in pt.read_patch(V213)}
        self.assertEqual(len(files["aten/src/ATen/mps/MPSStream.mm"].hunks), 5)  # check-patch: 5 hunks of 1 .mm file

    def test_hunk_counts_agree_with_headers(self):
        for p in (V211, V213):
            for f in pt.read_patch(p):
                for h in f.hunks:
                    self.assertEqual(len(h.old_lines()), h.old_count, (p, f.path, h.old_start))
                    self.assertEqual(len(h.new_lines()), h.new_count, (p, f.path, h.new_start))

    def test_new_files_are_added_whole(self):
        for f in pt.read_patch(V211):
            if f.is_new:
                (h,) = f.hunks
                self.assertEqual(f.added_ranges(), "1-%d" % h.new_count if h.new_count > 1 else "1")
                self.assertEqual(f.removed_ranges(), "")

    def test_every_series_patch_parses(self):
        for v in ("v2.11.0", "v2.13.0"):
            d = os.path.join(ROOT, "patches", v, "series")
            for name in sorted(os.listdir(d)):
                files = pt.read_patch(os.path.join(d, name))
                self.assertTrue(files, name)
                self.assertTrue(all(f.hunks or f.is_new for f in files), name)

    def test_real_locks(self):
        ctx = pt.read_lock(os.path.join(ROOT, "vendor", "v2.13.0", "mps-context.lock"))
        self.assertEqual(ctx.value("repo"), "pytorch/pytorch")
        self.assertEqual([p for p, _ in ctx.files], ["aten/src/ATen/mps/MPSStream.mm"])
        self.assertEqual([d[:2] for d in ctx.drops], [("aten/src/ATen/mps/MPSStream.mm", "6,68-73,75")])
        self.assertEqual([s[:2] for s in ctx.standins], [("2.11.0", "aten/src/ATen/mps/MPSEvent.mm"),
                                                         ("2.11.0", "aten/src/ATen/mps/MPSGuardImpl.mm")])
        torch = pt.read_lock(os.path.join(ROOT, "vendor", "v2.11.0", "pytorch.lock"))
        self.assertEqual(torch.value("tag"), "v2.11.0")
        self.assertRegex(torch.value("commit"), r"^[0-9a-f]{40}$")


class CommandLine(unittest.TestCase):
    def run_pt(self, *args):
        return subprocess.run([sys.executable, os.path.join(HERE, "patchtools.py")] + list(args),
                              capture_output=True, text=True)

    def test_files_and_hunks(self):
        r = self.run_pt("files", V213)
        self.assertEqual(r.returncode, 0)
        self.assertIn("aten/src/ATen/mps/MPSStream.mm old\n", r.stdout)
        self.assertEqual(self.run_pt("hunks", V213, "aten/src/ATen/mps/MPSStream.mm").stdout, "5\n")

    def test_lock_with_a_path(self):
        lock = os.path.join(ROOT, "vendor", "v2.13.0", "mps-context.lock")
        self.assertEqual(self.run_pt("lock", lock, "compile-drop", "aten/src/ATen/mps/MPSStream.mm").stdout, "6,68-73,75\n")
        self.assertEqual(self.run_pt("lock", lock, "standin", "aten/src/ATen/mps/MPSEvent.mm").stdout, "2.11.0\n")
        self.assertEqual(self.run_pt("lock", lock, "standin", "aten/src/ATen/mps/MPSStream.mm").stdout, "")

    def test_bad_arguments(self):
        self.assertEqual(self.run_pt("frobnicate").returncode, 2)


if __name__ == "__main__":
    unittest.main()
