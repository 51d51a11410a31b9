"""The progress bar: distinct requests ended out of those the job needs, how many succeeded, and
what the answers so far cost (at batch prices; "unknown" for a model without a price)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from dsbatch._run import Standing

__all__ = ["ProgressBar"]


class ProgressBar:
    """A tqdm bar fed with each step's ``Standing``; does nothing when disabled."""

    def __init__(self, enabled: bool, *, total: int) -> None:
        self._bar: Any = None
        if enabled:
            self._bar = tqdm(total=total, unit="req", desc="dsbatch", dynamic_ncols=True)

    def show(self, standing: Standing) -> None:
        if self._bar is None:
            return
        failed = standing.ended - standing.succeeded
        cost = "unknown" if standing.cost_usd is None else f"${standing.cost_usd:,.4f}"
        postfix = {"succeeded": standing.succeeded, "not answered": failed, "cost": cost}
        if standing.held:
            postfix["waiting for queue room"] = standing.held
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(standing.ended - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
