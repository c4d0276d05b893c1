"""Fixtures for the analysis tests."""
import pytest

from tests.analysis.fake_runs import FAKE_RESULTS, write_fake_run


@pytest.fixture
def fake_workdir(tmp_path):
  """tmp_path/work with runs supcon, simclr and afnc (only afnc logs cancellation statistics)."""
  work = tmp_path / "work"
  for seed, method in enumerate(FAKE_RESULTS):
    write_fake_run(work, method, seed)
  return work
