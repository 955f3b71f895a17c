"""Per-step metrics (immujax/runner/metrics_log.py): TensorBoard events, metrics.jsonl, arrays.

The writer is tested directly (a kill and a resume included), and on the workdir of a real
quick run of the house-price binary.
"""
import json
import pathlib
import struct

import numpy as np
import pytest

from experiments import metrics_log   # the old import path keeps working
from immujax import immunize
from tests.binaries import house_quick


def read_events(logdir) -> dict:
  """``{tag: {step: value}}`` from every TensorBoard event file under ``logdir``.

  Reads the TFRecord framing (length, CRC, event, CRC) and the ``Event`` protos directly,
  with the purge rule TensorBoard applies: a ``SessionLog.START`` at step s drops earlier
  files' events of steps >= s.
  """
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out = {}
  for path in sorted(pathlib.Path(logdir).glob("events.out.tfevents.*")):
    data = path.read_bytes()
    i = 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      if event.HasField("session_log") and event.session_log.status == 1:   # START
        for steps in out.values():
          for s in [s for s in steps if s >= event.step]:
            del steps[s]
      for v in event.summary.value:
        out.setdefault(v.tag, {})[event.step] = v.simple_value
  return out


def _terms(rng, t, r, n):
  a = lambda: rng.normal(size=(t, r, n))
  return immunize.Terms(supervised=a(), r_well=a(), r_ill=a(), log_kappa_p=a(),
                        log_kappa_h=a(), imma=a(), eig_residual=np.abs(a()) * 1e-12,
                        eig_ok=np.ones((t, r, n), bool))


def test_summaries_per_method_one_record_per_step_and_resume_without_duplicates(tmp_path):
  rng = np.random.default_rng(0)
  methods = ["ours", "ours", "imma"]
  chunks = [_terms(rng, 3, 3, 2) for _ in range(3)]
  chunks[1].supervised[0, 2, 1] = np.nan   # a diverged IMMA run is counted, not averaged
  log = metrics_log.MetricsLog(tmp_path, methods, n_tasks=2)   # row 2 is padding
  log.write(0, chunks[0])
  log.write(2, chunks[1])
  # Killed after writing steps 3-4 but before their checkpoint: the resumed process starts
  # from step 2 and rewrites steps 3-4 from its own chunk.
  log.close()
  again = _terms(rng, 3, 3, 2)
  log = metrics_log.MetricsLog(tmp_path, methods, n_tasks=2)
  log.write(2, again)
  log.write(4, chunks[2])
  log.close()

  recs = metrics_log.read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
  expected = {1: chunks[0], 2: chunks[0], 3: again, 4: again, 5: chunks[2], 6: chunks[2]}
  for r in recs:
    terms, j = expected[r["step"]], (r["step"] - 1) % 2
    ours = terms.log_kappa_h[:2, :2, j]
    assert r["ours/log_kappa_hh/mean"] == pytest.approx(ours.mean(), rel=1e-12)
    assert r["ours/log_kappa_hh/min"] == pytest.approx(ours.min(), rel=1e-12)
    assert r["imma/dp_loss/max"] == pytest.approx(terms.supervised[:2, 2, j].max(), rel=1e-12)
    assert r["imma/nonfinite_runs"] == 0
  events = read_events(tmp_path / "tensorboard")
  assert sorted(events["ours/r_ill/mean"]) == [1, 2, 3, 4, 5, 6]
  assert events["ours/r_ill/mean"][3] == pytest.approx(again.r_ill[:2, :2, 0].mean(), rel=1e-6)
  assert set(metrics_log.TERMS) == {t.split("/")[1] for t in events}
  runs = metrics_log.load_runs(tmp_path)
  assert runs["dp_loss"].shape == (2, 3, 6) and list(runs["step"]) == [1, 2, 3, 4, 5, 6]
  np.testing.assert_allclose(runs["r_well"][..., 2], again.r_well[:2, :, 0], rtol=1e-6)


def test_disabled_writer_writes_nothing(tmp_path):
  log = metrics_log.MetricsLog(tmp_path / "w", ["ours"], n_tasks=1, enabled=False)
  log.write(0, _terms(np.random.default_rng(1), 1, 1, 2))
  log.close()
  assert not (tmp_path / "w").exists()


@pytest.mark.xdist_group("house_quick")
def test_house_binary_writes_events_and_one_record_per_step(house_dir):
  w = house_quick(str(house_dir))   # the binary, in this process (shared with other tests)
  steps = json.loads((w / "config.json").read_text())["config"]["steps"]
  recs = metrics_log.read_jsonl(w / "metrics.jsonl")
  assert [r["step"] for r in recs] == list(range(1, steps + 1))
  events = read_events(w / "tensorboard")
  for m in ("ours", "opt_kappa"):
    for term in metrics_log.TERMS:
      for stat in metrics_log.STATS:
        assert sorted(events[f"{m}/{term}/{stat}"]) == list(range(1, steps + 1))
  # Ours lowers log κ(H_P) relative to its start and the last record agrees with the runs.
  runs = metrics_log.load_runs(w)
  last = recs[-1]["ours/log_kappa_hp/mean"]
  ours = [i for i, m in enumerate(runs["methods"]) if m == "ours"]
  assert last == pytest.approx(runs["log_kappa_hp"][0, ours, -1].mean(), rel=1e-6)
  assert last < recs[0]["ours/log_kappa_hp/mean"]
