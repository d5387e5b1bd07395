"""Deliberate mutations of the ledger's maths, to show the model test catches each one.

Each mutation is a one-line edit of the ledger's code (private: there is no public
way to break the ledger on purpose), made in memory. It names a module of the
ledger (``_tally``, ``_channels``, ``_sums``, ``_windows``, ``_ledger``) and a
small, distinctive snippet of it; the harness finds the one function or method of
that module whose source holds the snippet, edits it there, recompiles the
function in the module's namespace and swaps its code object in for the duration
of one model run, then puts the original back. Swapping the code object (rather
than rebinding a name) reaches every caller, also those that imported the
function by name (``_ledger`` calls ``_tally.task_figures``, ``_channels``
calls ``_sums.credit_to``). So a refactor that moves a line to another function
of the same module keeps its mutation working; a snippet that is no longer in
the module exactly once fails loudly (``LookupError``: update tests/mutations.py),
never skips. ``tests/test_model.py`` checks every snippet on every run, and runs
each mutation against the model under ``GPUTIME_HEAVY=1``.

``python -m tests.mutations`` prints the table in docs/reliability.md.
"""

from __future__ import annotations
import __future__

import contextlib
import importlib
import inspect
import logging
import sys
import textwrap
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    name: str
    module: str  # a module of gputime: "_tally", "_channels", ...
    old: str  # a snippet found exactly once in that module's functions
    new: str
    what: str


MUTATIONS = (
    Mutation(
        "threshold-inclusive",
        "_sums",
        "elif value > threshold:",
        "elif value >= threshold:",
        "a sample at the threshold counts as busy",
    ),
    Mutation(
        "no-split-share",
        "_sums",
        "weight = w1 - w0",
        "weight = a1 - a0",
        "samples credit active time, not the split share",
    ),
    Mutation(
        "split-share-off-by-one",
        "_windows",
        "rate = 1.0 / count",
        "rate = 1.0 / (count + 1)",
        "split divides by one service too many",
    ),
    Mutation(
        "tail-from-start",
        "_tally",
        "lo = start if start > horizon else horizon",
        "lo = start",
        "the tail covers the whole window again (double counting)",
    ),
    Mutation(
        "tail-after-failed-read",
        "_tally",
        "value = None if failed else channel.tail_value()",
        "value = channel.tail_value()",
        "a failed exit read still guesses the tail",
    ),
    Mutation(
        "tail-guessed-while-failing",
        "_tally",
        "failed = channel.failing or (",
        "failed = False or (",
        "an exit that skips its read takes a tail although the device's newest read failed",
    ),
    Mutation(
        "split-tail-no-share",
        "_tally",
        "weight = service.weight(lo, end) if split else length",
        "weight = length",
        "the tail ignores the split share",
    ),
    Mutation(
        "double-credit",
        "_channels",
        "service, horizon, end, value",
        "service, horizon - self.period, end, value",
        "each sample credits the stretch of the one before it again (double counting)",
    ),
    Mutation(
        "start-mark-whole-sample",
        "_channels",
        "start, max(at, start), value",
        "start, start, value",
        "a mark takes the sums before its sample, not up to its instant",
    ),
    Mutation(
        "window-never-closes",
        "_ledger",
        "bps.append((a + dt, w + rate * dt, 0.0))",
        "bps.append((a + dt, w + rate * dt, rate))",
        "a service window stays open after its last task ended",
    ),
    Mutation(
        "window-loses-its-last-stretch",
        "_ledger",
        "bps.append((a + dt, w + rate * dt, 0.0))",
        "bps.append((a, w, 0.0))",
        "a closing window forgets the time since its last change",
    ),
    Mutation(
        "window-opens-with-stale-totals",
        "_ledger",
        "bps.append((a, w, 1.0))",
        "bps.append((0.0, 0.0, 1.0))",
        "a window opens with its totals back at zero",
    ),
    Mutation(
        "tail-only-threshold-inclusive",
        "_ledger",
        "if value > profile.threshold:",
        "if value >= profile.threshold:",
        "the tail-only end counts a tail at the threshold as busy",
    ),
    Mutation(
        "reset-takes-whole-sample",
        "_sums",
        "channels.place(mark, now)",
        "channels.fill_now(mark)",
        "a sample straddling a reset counts its part before the reset",
    ),
    Mutation(
        "reset-keeps-count",
        "_sums",
        "service.task_count = 0",
        "service.task_count = service.task_count",
        "reset does not zero task_count",
    ),
    Mutation(
        "no-settle-read",
        "_ledger",
        "or not self.channels.covered_up_to(self._last_close)",
        "",
        "no settle read after the last task (service totals stay short)",
    ),
    Mutation(
        "wake-while-unsettled",
        "_ledger",
        "if channels.min_horizon >= self._last_close - EPS:",
        "if True:",
        "the first task after idle skips a window not yet read",
    ),
    Mutation(
        "forget-too-early",
        "_sums",
        "service.last_close <= floor + EPS",
        "service.last_close <= floor + 1.0",
        "a service leaves the working set before its window is read",
    ),
    Mutation(
        "exit-read-skipped-too-long",
        "_channels",
        "due = max(last_end + late,",
        "due = max(last_end + late + self.period,",
        "task exits skip a read although a new sample is out",
    ),
    Mutation(
        "first-sample-exit-skipped",
        "_channels",
        "due = channel.quiet_until if channel.idle_until > -math.inf else -math.inf",
        "due = channel.quiet_until",
        "an exit before any sample was seen skips its read, so it misses the driver's first",
    ),
    Mutation(
        "failure-not-marked-on-services",
        "_channels",
        "service.failed_on.add(channel.device)",
        "None",
        "a failed read never makes a service partial",
    ),
    Mutation(
        "failure-not-marked-on-tasks",
        "_channels",
        "self.failures += 1",
        "self.failures += 0",
        "a failed read never makes a running task partial",
    ),
    Mutation(
        "coverage-ignores-failing-device",
        "_channels",
        "return service.active_between(lo, now) if now > lo else 0.0",
        "return 0.0",
        "coverage reads 1.0 while every read fails (issue 11, point 1)",
    ),
    Mutation(
        "service-status-forgets-failure",
        "_tally",
        "total.finish(profile, bool(failed_on))",
        "total.finish(profile, False)",
        "a service is ok although a reading it needed failed",
    ),
)


def _functions(module: types.ModuleType) -> Iterator[tuple[str, types.FunctionType]]:
    """Every function defined in ``module``, and every method of its classes."""
    for name, obj in vars(module).items():
        if inspect.isfunction(obj) and obj.__module__ == module.__name__:
            yield name, obj
        elif inspect.isclass(obj) and obj.__module__ == module.__name__:
            for attr, member in vars(obj).items():
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__  # noqa: PLW2901 - the function it wraps
                elif isinstance(member, property):
                    member = member.fget  # noqa: PLW2901 - likewise
                if inspect.isfunction(member):
                    yield f"{name}.{attr}", member


def locate(mutation: Mutation) -> tuple[types.ModuleType, str, types.FunctionType, str]:
    """``(module, qualified name, function, its dedented source)`` holding the snippet.

    Raises:
        LookupError: The snippet is not in exactly one function of the module,
            exactly once: the ledger changed, and tests/mutations.py must follow.
    """
    module = importlib.import_module(f"gputime.{mutation.module}")
    found = []
    for name, func in _functions(module):
        try:
            source = textwrap.dedent(inspect.getsource(func))
        except (OSError, TypeError):  # pragma: no cover - every function here has source
            continue
        count = source.count(mutation.old)
        if count:
            found.append((name, func, source, count))
    if len(found) != 1 or found[0][3] != 1:
        where = ", ".join(f"{name} ({count}x)" for name, _, _, count in found) or "nowhere"
        raise LookupError(
            f"mutation {mutation.name!r}: {mutation.old!r} must be in exactly one function "
            f"of gputime.{mutation.module}, once; found in {where}: the ledger changed, "
            "update tests/mutations.py"
        )
    name, func, source, _ = found[0]
    return module, name, func, source


def mutated_code(mutation: Mutation) -> tuple[types.FunctionType, types.CodeType, str]:
    """The function to mutate, its mutated code object, and its qualified name."""
    module, name, func, source = locate(mutation)
    if source.lstrip().startswith("@"):  # pragma: no cover - none of the mutated ones is
        raise LookupError(f"mutation {mutation.name!r}: {name} is decorated")
    code = compile(
        source.replace(mutation.old, mutation.new),
        f"<mutation {mutation.name}>",
        "exec",
        # The same future import as the ledger's modules (annotations stay strings).
        flags=__future__.annotations.compiler_flag,
        dont_inherit=True,
    )
    namespace: dict[str, object] = {}
    exec(code, vars(module), namespace)  # the module's own source, one line edited
    new = namespace[func.__name__]
    assert isinstance(new, types.FunctionType)
    if new.__code__.co_freevars != func.__code__.co_freevars:  # pragma: no cover
        raise LookupError(f"mutation {mutation.name!r}: {name} is a closure")
    return func, new.__code__, f"{mutation.module}.{name}"


@contextlib.contextmanager
def applied(mutation: Mutation) -> Iterator[str]:
    """The ledger with ``mutation`` in place for the block; yields where it is."""
    func, code, where = mutated_code(mutation)
    original = func.__code__
    func.__code__ = code
    try:
        yield where
    finally:
        func.__code__ = original


def caught(mutation: Mutation, examples: int = 1000, steps: int = 50) -> tuple[bool, str, float]:
    """Run the model test with ``mutation``; ``(caught, first line of the failure, seconds)``.

    The run stops at the first mismatch, so a mutation caught early costs little;
    the generous number of histories keeps a mutation that needs a rare history
    (a failed read, then a task shorter than a sample period) caught whatever
    histories a hypothesis release draws first (hypothesis 6.100.3 needs about
    400 for ``tail-guessed-while-failing``, the newest about 150).
    """
    from hypothesis import Phase

    from tests.test_model import run_model

    started = time.perf_counter()
    mutated = applied(mutation)
    mutated.__enter__()  # a stale snippet raises here, before anything is caught
    logging.disable(logging.CRITICAL)  # the failing reads log; that is not the point here
    try:
        run_model(examples, steps, phases=(Phase.explicit, Phase.generate))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as failure:  # a mismatch, or the ledger raising (IndexError...)
        message = f"{type(failure).__name__}: {str(failure).splitlines()[0]}"
        return True, message, time.perf_counter() - started
    finally:
        logging.disable(logging.NOTSET)
        mutated.__exit__(None, None, None)
    return False, "", time.perf_counter() - started


def main() -> int:
    print("| mutation (where) | what it breaks | caught | seconds | first mismatch |")
    print("|---|---|---|---:|---|")
    missed = 0
    for mutation in MUTATIONS:
        where = mutated_code(mutation)[2]
        found, message, seconds = caught(mutation)
        missed += not found
        print(
            f"| `{mutation.name}` (`{where}`) | {mutation.what} | "
            f"{'yes' if found else '**no**'} | {seconds:.1f} | {message} |",
            flush=True,
        )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
