"""The public API is deliberate: changing it means changing this list."""

import dsbatch
import dsbatch.testing


def test_public_names():
    assert dsbatch.__all__ == sorted(dsbatch.__all__)
    assert dsbatch.__all__ == [
        "BatchAPIError",
        "BatchStatus",
        "BudgetExceededError",
        "DsbatchError",
        "Job",
        "JobStatus",
        "LedgerError",
        "Plan",
        "PollSchedule",
        "PromptError",
        "RequestTooLargeError",
        "RowFailedError",
        "__version__",
        "card",
        "jobs",
        "map",
        "preview",
    ]
    for name in dsbatch.__all__:
        assert hasattr(dsbatch, name)


def test_testing_names():
    assert dsbatch.testing.__all__ == ["Emulator", "Faults", "HttpFault", "default_responder"]


def test_errors_share_one_root():
    for name in (
        "BatchAPIError",
        "BudgetExceededError",
        "LedgerError",
        "PromptError",
        "RequestTooLargeError",
        "RowFailedError",
    ):
        assert issubclass(getattr(dsbatch, name), dsbatch.DsbatchError)
