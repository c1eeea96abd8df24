"""Progress bars for long commands (dump, restore, copy, check): tqdm on stderr when
stderr is a terminal and tqdm is installed (``pip install kvmm[progress]``), nothing at
all otherwise, so scripts and pipes see no extra output."""

from __future__ import annotations

import sys


class Progress:
    """A bar counting up to ``total`` (None: unknown) in ``unit``; call it with the
    amount done since the last call. A context manager that closes the bar.

    ``enabled`` tells whether a bar is shown, so a caller may skip work it does only
    to size the bar.
    """

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        unit: str = "it",
        unit_scale: bool = False,
        stream=None,
    ):
        stream = sys.stderr if stream is None else stream
        self._bar = None
        if _is_terminal(stream):
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                unit_scale=unit_scale,
                file=stream,
                dynamic_ncols=True,
            )

    @property
    def enabled(self) -> bool:
        return self._bar is not None

    def __call__(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set_total(self, total: int) -> None:
        """Size the bar once the total is known."""
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def to(self, position: int) -> None:
        """Move the bar to ``position`` (for work measured by an offset)."""
        if self._bar is not None:
            self._bar.update(position - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
