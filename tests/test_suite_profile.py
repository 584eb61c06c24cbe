"""tests/scripts/suite_profile.py's tables, from records of known times."""

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
                 "secs": 0.1, "hit": True}])
  rows = suite_profile.summarize(records)
  assert rows["test_a.py"]["wall"] == 100.0 and rows["test_a.py"]["cpu"] == 54.0
  assert (rows["test_b.py"]["compiled"], rows["test_b.py"]["cached"],
          rows["test_b.py"]["hits"]) == (1, 1, 1)
  # 26 s idle at 0.13 of a core: waits. 20 s "idle" at 0.7 of a core: the
  # other worker shared the cores. 2.5 s: under the 3 s threshold.
  assert suite_profile.waits(records) == [
      (26.0, 30.0, 4.0, "tests/test_a.py::sleeps")]
  assert "| tests/test_a.py::sleeps | 26 | 30 | 4 |" in (
      suite_profile.waits_table(suite_profile.waits(records)))
