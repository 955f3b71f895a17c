"""Test helpers: the binaries run in-process, and quick study runs shared within a process.

``run_binary("house_price", [...])`` runs ``experiments.house_price`` exactly as its
``__main__`` does (``immujax.runner.cli.run``), on a fresh absl ``FlagValues``, and returns
``(exit status, stdout, stderr)``: no interpreter start-up, and the compiled programs stay
in this process's jit cache for the next run. The ``*_quick`` functions run a quick config
once per test process (pytest-xdist worker) into a temporary workdir and return it.
"""
import contextlib
import functools
import importlib
import io
import pathlib
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs"


def run_binary(module: str, argv) -> tuple[int, str, str]:
  """``python -m experiments.<module> *argv`` in this process: (status, stdout, stderr)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from immujax.runner import cli  # pylint: disable=g-import-not-at-top
  mod = importlib.import_module(f"experiments.{module}")
  out, err = io.StringIO(), io.StringIO()
  code = 0
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      cli.run(mod.define, mod.main, doc=mod.__doc__, argv=[module, *map(str, argv)],
              flag_values=flags.FlagValues())
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  return code, out.getvalue(), err.getvalue()


def run_ok(module: str, argv) -> str:
  code, out, err = run_binary(module, argv)
  assert code == 0, out[-2000:] + err[-3000:]
  return out


@functools.cache
def _tmp() -> pathlib.Path:
  return pathlib.Path(tempfile.mkdtemp(prefix="immujax-quick-"))


@functools.cache
def house_quick(house_dir: str) -> pathlib.Path:
  """A finished ``house_price`` quick run (4 methods × 2 seeds × 40 steps)."""
  w = _tmp() / "house"
  out = run_ok("house_price", [f"--workdir={w}", f"--data_dir={house_dir}",
                               f"--config={CONFIGS / 'house_price.py'}:quick"])
  (w.parent / "house.stdout").write_text(out)   # what the binary printed
  return w


@functools.cache
def mnist_quick() -> pathlib.Path:
  """A finished ``mnist_pairs`` quick run on the embedded sample (3 pairs × 4 methods)."""
  w = _tmp() / "mnist"
  out = run_ok("mnist_pairs", [f"--workdir={w}", f"--config={CONFIGS / 'mnist_pairs.py'}:quick"])
  (w.parent / "mnist.stdout").write_text(out)   # what the binary printed
  return w
