"""What a comparison shows while it runs: one progress bar, or one line per run.

In a terminal, one bar covers the whole comparison: runs done of runs to
train, the running child, its epoch and last validation accuracy, and the time
left. Elsewhere (a log file, CI, a notebook's captured output) each run gets a
line when it starts and when it ends. Either way, lines that matter (a failed
run, a resumed parent) are printed as lines.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any


class Progress:
    """Tracks a comparison's runs for the person watching it.

    Args:
        total: Runs to train (skipped runs do not count).
        log: Where lines go.
        bar: Draw a progress bar on standard error instead of a line per run.
        lines: Without a bar, a line per run as it starts and ends; `False`
            shows nothing per run (a tuning sweep's). Defaults to `True`.
    """

    def __init__(
        self, total: int, log: Callable[[str], None], *, bar: bool = False, lines: bool = True
    ):
        self.total = total
        self._lines = lines
        self.done = 0
        self._log = log
        self._began = time.perf_counter()
        self._label = ""
        self._epochs = 0
        self._bar = None
        self._lines_to = sys.stderr  # beside a bar: standard error, or a notebook's output
        if bar and total:
            from tqdm.auto import tqdm  # a notebook's own bar there

            self._bar = tqdm(
                total=total,
                unit="run",
                file=sys.stderr,
                dynamic_ncols=True,
                bar_format="{n_fmt}/{total_fmt} runs |{bar:20}| {desc} [{elapsed}<{remaining}]",
            )
            # A notebook's bar is a widget: there standard error shows as a warning.
            if any(c.__module__ == "tqdm.notebook" for c in type(self._bar).__mro__):
                self._lines_to = sys.stdout

    def line(self, text: str) -> None:
        """Prints a line that stays, above the bar when there is one: on standard error
        beside a terminal's bar, on standard output beside a notebook's (a widget), where
        standard error shows as a warning."""
        if self._bar is not None:
            self._bar.write(text, file=self._lines_to)
        else:
            self._log(text)

    def start(self, label: str, epochs: int) -> None:
        """A run, or a pack of runs, starts training (in this process)."""
        self._label, self._epochs = label, epochs
        if self._bar is not None:
            self._bar.set_description_str(f"{label}: starting", refresh=True)
        elif self._lines:  # counted once, as each run ends: a pack's start has no count
            self._log(f"{label}: training{self._eta()}")

    def epoch(self, metrics: dict[str, float], step: int) -> None:
        """An epoch of the running run ended (an `EpochLogger` sink)."""
        if self._bar is None:
            return
        accuracy = metrics.get("val_accuracy", metrics.get("accuracy"))
        shown = f", val acc {accuracy:.4f}" if accuracy is not None else ""
        self._bar.set_description_str(f"{self._label}: epoch {step}/{self._epochs}{shown}")

    def finish(self, result: str, *, label: str | None = None, failed: bool = False) -> None:
        """A run ended; `result` says how. `label` names it when runs train elsewhere."""
        self.done += 1
        text = f"[{self.done}/{self.total}] {label or self._label}: {result}"
        if self._bar is None:
            if self._lines:
                self._log(text)
        else:
            if failed and self._lines:
                self.line(text)
            self._bar.update(1)

    def close(self, how: str = "") -> None:
        """Ends the bar, leaving it on screen at its final count and saying how it ended:
        `how`, or "done" when every run is counted, else "stopped"."""
        if self._bar is not None:
            ended = how or ("done" if self.done >= self.total else "stopped")
            self._bar.set_description_str(ended, refresh=False)
            self._bar.close()
            self._bar = None

    def _eta(self) -> str:
        if not self.done:
            return ""
        seconds = (time.perf_counter() - self._began) / self.done * (self.total - self.done)
        minutes, secs = divmod(int(round(seconds)), 60)
        return f" (about {minutes}m{secs:02d}s left)" if minutes else f" (about {secs}s left)"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: Any, *exc_info: Any) -> None:
        interrupted = kind is not None and issubclass(kind, (KeyboardInterrupt, SystemExit))
        self.close("interrupted" if interrupted else "")


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (Jupyter, Colab) that can draw tqdm's notebook
    bar (ipywidgets installed)."""
    import importlib.util
    import sys

    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if shell is None or "IPKernelApp" not in getattr(shell, "config", {}):
        return False
    return importlib.util.find_spec("ipywidgets") is not None
