#!/usr/bin/env python3
"""Tests of records.py: a perf_analyzer measurement read from its CSV, from its summary lines when
the CSV is missing (with a warning for a non-zero exit), or an error record; an in-process run's
record from `tch-streams run --json`. Standard library only.

usage: test_records.py [unittest arguments]
"""
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import records  # noqa: E402

CSV = ("Concurrency,Inferences/Second,Client Send,p50 latency,p90 latency,p95 latency,p99 latency,Avg latency\n"
       "16,3012.5,7,5100,6000,6500,8000,5300\n")
SUMMARY = ("Concurrency: 16, throughput: 2999.1 infer/sec, latency 5300 usec\n"
           "  p50 latency: 5100 usec\n  p90 latency: 6000 usec\n  p99 latency: 8000 usec\n")


class PerfAnalyzer(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.csv, self.log = os.path.join(self.dir.name, "m-t-c16.csv"), os.path.join(self.dir.name, "m-t-c16.log")

    def tearDown(self):
        self.dir.cleanup()

    def write(self, path, text):
        with open(path, "w") as f:
            f.write(text)

    def test_from_the_csv(self):
        self.write(self.csv, CSV)
        r = records.perf_analyzer_record(self.csv, "m", "ours-grpc", "16", "0", self.log, "2048")
        self.assertEqual(r, {"model": "m", "target": "ours-grpc", "concurrency": 16, "tool": "perf_analyzer",
                             "client_peak_rss_mib": 2, "infer_per_s": 3012.5, "p50_us": 5100.0, "p90_us": 6000.0,
                             "p95_us": 6500.0, "p99_us": 8000.0, "avg_us": 5300.0})

    def test_from_the_summary_lines_with_a_warning(self):
        self.write(self.log, SUMMARY)
        r = records.perf_analyzer_record(self.csv, "m", "ours-http", 16, 1, self.log, 0)
        self.assertEqual((r["infer_per_s"], r["p50_us"], r["p90_us"], r["p99_us"]), (2999.1, 5100.0, 6000.0, 8000.0))
        self.assertIn("summary lines", r["note"])
        self.assertEqual(r["warning"], "perf_analyzer exit 1 (see m-t-c16.log)")
        self.assertNotIn("error", r)

    def test_an_error_record(self):
        self.write(self.log, "Killed\n")
        r = records.perf_analyzer_record(self.csv, "m", "pytriton-grpc", 64, 137, self.log, 0)
        self.assertTrue(r["error"].startswith("perf_analyzer exit 137: "), r["error"])
        self.assertTrue(r["error"].endswith("Killed\n"))
        self.assertNotIn("warning", r)

    def test_the_line_is_plain_json(self):
        self.write(self.csv, CSV)
        r = records.perf_analyzer_record(self.csv, "m", "ours-grpc", 16, 0, self.log, 0)
        self.assertEqual(json.loads(json.dumps(r)), r)


class Engine(unittest.TestCase):
    def test_engine_record(self):
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"requests_per_s": 1234.5, "stats": {"latency_us_p50": 10, "latency_us_p95": 20, "latency_us_p99": 30}}, f)
        try:
            r = records.engine_record(f.name, "small-mlp", "4")
        finally:
            os.remove(f.name)
        self.assertEqual(r, {"model": "small-mlp", "target": "engine", "concurrency": 4, "tool": "tch-streams run",
                             "infer_per_s": 1234.5, "p50_us": 10, "p95_us": 20, "p99_us": 30})
        self.assertEqual(records.engine_failure("small-mlp", 4)["error"],
                         "tch-streams run failed: see logs/small-mlp-engine-c4.log")


if __name__ == "__main__":
    unittest.main()
