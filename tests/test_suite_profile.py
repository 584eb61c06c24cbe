"""tests/scripts/suite_profile.py's tables, from records of known times,
and its timing of the garbage collector."""

import gc
import json

from tests.scripts import suite_profile


def _test(name, start, end, cpu):
  return [{"kind": "start", "test": name, "t": start},
          {"kind": "end", "test": name, "t": end, "cpu": cpu}]


def test_files_add_up_and_only_tests_under_half_a_core_wait():
  records = (_test("tests/test_a.py::sleeps", 0.0, 30.0, 4.0)
             + _test("tests/test_a.py::shares_the_cores", 30.0, 100.0, 50.0)
             + _test("tests/test_b.py::short_wait", 0.0, 4.0, 1.5)
             + [{"kind": "compile", "test": "tests/test_b.py::short_wait",
                 "secs": 0.7, "hit": False},
                {"kind": "compile", "test": "tests/test_b.py::short_wait",
                 "secs": 0.1, "hit": True},
                {"kind": "gc", "test": "tests/test_a.py::sleeps",
                 "secs": 0.25},
                {"kind": "gc", "test": "tests/test_a.py::shares_the_cores",
                 "secs": 1.5}])
  rows = suite_profile.summarize(records)
  assert rows["test_a.py"]["wall"] == 100.0 and rows["test_a.py"]["cpu"] == 54.0
  assert rows["test_a.py"]["gc_s"] == 1.75 and rows["test_b.py"]["gc_s"] == 0
  assert "| test_a.py | 2 | 100 | 54 | 1.8 | 0 (0) | 0 | 0 |" in (
      suite_profile.table(rows))
  assert (rows["test_b.py"]["compiled"], rows["test_b.py"]["cached"],
          rows["test_b.py"]["hits"]) == (1, 1, 1)
  # 26 s idle at 0.13 of a core: waits. 20 s "idle" at 0.7 of a core: the
  # other worker shared the cores. 2.5 s: under the 3 s threshold.
  assert suite_profile.waits(records) == [
      (26.0, 30.0, 4.0, "tests/test_a.py::sleeps")]
  assert "| tests/test_a.py::sleeps | 26 | 30 | 4 |" in (
      suite_profile.waits_table(suite_profile.waits(records)))


def test_the_collectors_seconds_are_recorded_under_the_test(tmp_path,
                                                           monkeypatch):
  log = tmp_path / "records.jsonl"
  monkeypatch.setenv(suite_profile.LOG_ENV, str(log))
  # Under suite_profile.py itself this process already times its
  # collections: its timer and seconds are set aside for the test.
  before, saved = list(gc.callbacks), dict(suite_profile._GC)  # pylint: disable=protected-access
  others = [c for c in before if not getattr(c, "_suite_profile", False)]
  gc.callbacks[:] = others
  suite_profile._GC.update(start=None, secs=0.0)  # pylint: disable=protected-access
  try:
    suite_profile._time_gc()  # pylint: disable=protected-access
    suite_profile._time_gc()  # pylint: disable=protected-access
    assert len(gc.callbacks) == len(others) + 1  # installed once
    for _ in range(3):
      cycle = [[] for _ in range(10000)]
      for a, b in zip(cycle, cycle[1:] + cycle[:1]):
        a.append(b)
      del cycle, a, b
      gc.collect()
    suite_profile._flush_gc("tests/test_x.py::t")  # pylint: disable=protected-access
    suite_profile._flush_gc("tests/test_x.py::u")  # nothing since: no record
  finally:
    gc.callbacks[:] = before
    suite_profile._GC.update(saved)  # pylint: disable=protected-access
  (record,) = [json.loads(line) for line in log.read_text().splitlines()]
  assert record["kind"] == "gc" and record["test"] == "tests/test_x.py::t"
  assert record["secs"] > 0
